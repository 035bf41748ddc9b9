//! The races between an editor and the bridge, one test per editor behaviour (`docs/design.md`,
//! "How the editors behave"): a remote edit on its way while the person types (VS Code and
//! Helix answer `applied: false`, Neovim drops it and answers `applied: true`), Neovim's 150 ms
//! batching, Helix's version gaps and its completion preview that reverts a peer's edit.
//!
//! The peer is a plain Yjs client (`YClient`), so that each test pins one editor's behaviour.
//! "On its way" is made deterministic by holding the editor's incoming `applyEdit`s
//! (`hold_apply_edits`) while the person types, then letting them arrive.

use std::time::Duration;

use duet_e2e::editor::{converge, wait_server_file, FakeEditor, Kind, WAIT};
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::yclient::YClient;

const PATH: &str = "main.py";
const INITIAL: &str = "hello\nworld\n";

async fn setup(initial: &str) -> (Database, Server, RoomRef, YClient) {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[(PATH, initial)]).await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    (db, server, room, peer)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The peer edits; the editor's copy of that edit is held on its way while the person types
/// three characters; then it arrives, stale. The bridge must get the peer's edit into the
/// buffer anyway, and the typed text into the room.
async fn typing_while_an_edit_is_on_its_way(
    ed: &FakeEditor,
    server: &Server,
    room: &RoomRef,
    peer: &YClient,
) {
    ed.hold_apply_edits();
    peer.insert(PATH, 0, "PEER ");
    ed.wait_held_apply_edits(1, WAIT).await;
    ed.type_text(PATH, chars("hello\nworld"), "xyz").await;
    ed.release_apply_edits();
    let expected = "PEER hello\nworldxyz\n";
    let text = converge(server, room, PATH, &[ed], WAIT).await;
    assert_eq!(text, expected);
    peer.wait_text(PATH, expected, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_apply_edit_is_resent_after_typing() {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, PATH).await;
    typing_while_an_edit_is_on_its_way(&ed, &server, &room, &peer).await;
    let stats = ed.stats();
    assert!(
        stats.rejected >= 1,
        "VS Code rejected the stale edit: {stats:?}"
    );
    // The re-sent edit cites the version the editor is at now.
    assert!(stats.applied >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_silent_drop_with_applied_true_is_resent() {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::builder(Kind::Neovim)
        .debounce(Duration::ZERO)
        .join(&server, &room, PATH)
        .await;
    typing_while_an_edit_is_on_its_way(&ed, &server, &room, &peer).await;
    let stats = ed.stats();
    assert!(
        stats.dropped >= 1,
        "Neovim dropped the stale edit (and said applied: true): {stats:?}"
    );
}

/// The same race while Neovim batches: the three typed characters are still in its 150 ms
/// window when the stale edit arrives (dropped, `applied: true`), then go out as one
/// `didChange` with three changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_edit_dropped_while_changes_are_batched_is_resent() {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::builder(Kind::Neovim)
        .debounce(Duration::from_millis(150))
        .join(&server, &room, PATH)
        .await;
    typing_while_an_edit_is_on_its_way(&ed, &server, &room, &peer).await;
    let stats = ed.stats();
    assert!(stats.dropped >= 1, "{stats:?}");
    assert!(stats.max_changes_in_one_notification >= 3, "{stats:?}");
}

/// A person types steadily at the end while a peer streams edits at the start: with Neovim's
/// debounce at `debounce`, whatever mix of batches, echoes and dropped edits that gives, both
/// sides end with everything.
async fn neovim_typing_against_a_stream_of_peer_edits(debounce: Duration) -> FakeEditor {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::builder(Kind::Neovim)
        .debounce(debounce)
        .typing_delay(Duration::from_millis(7))
        .join(&server, &room, PATH)
        .await;
    let typed: String = (0..12).map(|i| format!("n{i}é🎉 ")).collect();
    let peer_stream = async {
        for i in 0..30 {
            peer.insert(PATH, 0, &format!("p{i};"));
            tokio::time::sleep(Duration::from_millis(13)).await;
        }
    };
    tokio::join!(ed.type_text(PATH, chars(INITIAL), &typed), peer_stream);
    let peers: String = (0..30).rev().map(|i| format!("p{i};")).collect();
    let expected = format!("{peers}{INITIAL}{typed}");
    let text = converge(&server, &room, PATH, &[&ed], Duration::from_secs(20)).await;
    assert_eq!(text, expected);
    peer.wait_text(PATH, &expected, WAIT).await;
    ed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_batched_changes_converge_with_debounce_150() {
    let ed = neovim_typing_against_a_stream_of_peer_edits(Duration::from_millis(150)).await;
    let stats = ed.stats();
    assert!(
        stats.max_changes_in_one_notification >= 2,
        "batched: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_changes_converge_with_debounce_0() {
    let ed = neovim_typing_against_a_stream_of_peer_edits(Duration::ZERO).await;
    let stats = ed.stats();
    assert_eq!(stats.max_changes_in_one_notification, 1, "{stats:?}");
}

/// Helix bumps its version for completion previews it never sends: the bridge sees 3 → 7.
/// Edits arriving in a gap are rejected by Helix until its next `didChange`; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_version_gaps_are_accepted() {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::builder(Kind::Helix)
        .typing_delay(Duration::from_millis(3))
        .join(&server, &room, PATH)
        .await;
    let cursor = ed.place_cursor(PATH, chars(INITIAL));
    ed.type_at(PATH, cursor, "abc").await;
    ed.helix_skip_versions(PATH, 3);
    ed.type_at(PATH, cursor, "def").await;
    wait_server_file(
        &server,
        &room,
        PATH,
        &format!("{INITIAL}abcdef"),
        WAIT,
        &[&ed],
    )
    .await;
    // A peer edit arrives while the version has jumped without a didChange.
    ed.helix_skip_versions(PATH, 4);
    peer.insert(PATH, 0, "P1 ");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ed.type_at(PATH, cursor, "ghi").await;
    ed.helix_skip_versions(PATH, 2);
    peer.insert(PATH, 0, "P2 ");
    ed.type_at(PATH, cursor, "jkl").await;
    let expected = format!("P2 P1 {INITIAL}abcdefghijkl");
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, expected);
    peer.wait_text(PATH, &expected, WAIT).await;
    assert!(ed.stats().version_gaps >= 3, "{:?}", ed.stats());
}

/// A completion preview shown and dismissed moves Helix's version without a `didChange`, and
/// then the person stops typing: a peer's edit refused for its stale version must still reach
/// the buffer (sent again unchecked after a quiet second), not wait for the next keystroke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_gets_peer_edits_after_a_dismissed_completion_without_typing() {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::joined(Kind::Helix, "hx", &server, &room, PATH).await;
    ed.helix_skip_versions(PATH, 2);
    let sent = tokio::time::Instant::now();
    peer.insert(PATH, 0, "PEER ");
    ed.wait_text(PATH, &format!("PEER {INITIAL}"), WAIT).await;
    let took = sent.elapsed();
    let stats = ed.stats();
    assert!(
        stats.rejected >= 1,
        "the stale edit was refused first: {stats:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the peer's edit took {took:?} to arrive"
    );
    // The unchecked retry is an ordinary edit: its echo settles it, typing goes on.
    ed.insert(PATH, 0, "me ");
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, format!("me PEER {INITIAL}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_stale_apply_edit_is_rejected_and_resent() {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::joined(Kind::Helix, "hx", &server, &room, PATH).await;
    typing_while_an_edit_is_on_its_way(&ed, &server, &room, &peer).await;
    assert!(ed.stats().rejected >= 1, "{:?}", ed.stats());
}

/// Helix's completion preview: completion requested, a peer's edit arrives (and is applied in
/// Helix while the menu is open), the menu stays open `open_for`, the user accepts — Helix
/// restores its saved state (the peer's edit vanishes, no didChange) and sends ONE change that
/// deletes the peer's text and inserts the completion. The peer's text must survive, however
/// long the menu stayed open (a 3 s hold used to decide it: picked after 4 s, the peer's text
/// was deleted for everyone).
async fn helix_completion_keeps_peer_text(open_for: Duration) {
    let initial = "import sys\n\nx = 1\n";
    let (_db, server, room, peer) = setup(initial).await;
    let ed = FakeEditor::joined(Kind::Helix, "hx", &server, &room, PATH).await;
    ed.insert(PATH, chars(initial), "imp");
    let typed = format!("{initial}imp");
    wait_server_file(&server, &room, PATH, &typed, WAIT, &[&ed]).await;

    let end = chars(&typed);
    let with_note = typed.replacen("sys", "sys, os  # peer", 1);
    let during = async {
        peer.insert(PATH, 10, ", os  # peer");
        ed.wait_text(PATH, &with_note, WAIT).await;
        tokio::time::sleep(open_for).await;
    };
    ed.helix_completion_preview_revert(PATH, end, (end - 3, end), "import os", during)
        .await;
    let expected = format!("{}import os", &with_note[..with_note.len() - 3]);
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(
        text, expected,
        "the peer's edit must survive the completion"
    );
    peer.wait_text(PATH, &expected, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_completion_preview_revert_keeps_peer_text() {
    helix_completion_keeps_peer_text(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_completion_picked_after_four_seconds_keeps_peer_text() {
    helix_completion_keeps_peer_text(Duration::from_secs(4)).await;
}

/// Helix's version jumps without a revert behind it (a change that does not span the peer's
/// edit) and a completion accepted with no peer edit in between are ordinary typing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_completion_without_a_revert_is_ordinary_typing() {
    let (_db, server, room, peer) = setup("ab\n").await;
    let ed = FakeEditor::joined(Kind::Helix, "hx", &server, &room, PATH).await;
    ed.completion(PATH, 2).await;
    peer.insert(PATH, 0, "P");
    ed.wait_text(PATH, "Pab\n", WAIT).await;
    ed.helix_skip_versions(PATH, 2);
    ed.insert(PATH, 3, "c");
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, "Pabc\n");
    ed.helix_completion_preview_revert(PATH, 4, (2, 4), "bcd", async {})
        .await;
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, "Pabcd\n");
}

/// Several cursors: one `didChange` with several changes (Helix lists them top-down in
/// shifting coordinates, VS Code bottom-up), racing a peer's edit on its way.
async fn multi_cursor_edit_converges(kind: Kind) {
    let initial = "a\nb\nc\n";
    let (_db, server, room, peer) = setup(initial).await;
    let ed = FakeEditor::joined(kind, kind.name(), &server, &room, PATH).await;
    ed.edit_many(PATH, &[(0, 0, "1🎉"), (2, 2, "2世"), (4, 5, "3")]);
    assert_eq!(ed.text(PATH), "1🎉a\n2世b\n3\n");
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, "1🎉a\n2世b\n3\n");

    ed.hold_apply_edits();
    peer.append(PATH, "tail\n");
    ed.wait_held_apply_edits(1, WAIT).await;
    ed.edit_many(PATH, &[(0, 1, ""), (6, 6, "x"), (9, 9, "y")]);
    assert_eq!(ed.text(PATH), "🎉a\n2世xb\n3y\n");
    ed.release_apply_edits();
    let expected = "🎉a\n2世xb\n3y\ntail\n";
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, expected, "\n{}", ed.trace_tail(12));
    peer.wait_text(PATH, expected, WAIT).await;
    assert!(ed.stats().max_changes_in_one_notification >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_multi_cursor_edit_in_one_notification_converges() {
    multi_cursor_edit_converges(Kind::Helix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_multi_cursor_edit_in_one_notification_converges() {
    multi_cursor_edit_converges(Kind::VsCode).await;
}

/// The smallest form of a transform error: a peer appends a line after the final newline
/// while the person types just before that newline. The peer's insert must stay after the
/// newline (where the peer put it), so the typed character stays on its own line — whatever
/// equivalent text diff ("insert `\nb` after `a`") the bridge might compute.
async fn typing_before_a_newline_while_a_peer_appends_a_line(kind: Kind) {
    let (_db, server, room, peer) = setup("a\n").await;
    let ed = FakeEditor::joined(kind, kind.name(), &server, &room, PATH).await;
    ed.hold_apply_edits();
    peer.append(PATH, "b\n");
    ed.wait_held_apply_edits(1, WAIT).await;
    ed.insert(PATH, 1, "X");
    ed.release_apply_edits();
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, "aX\nb\n", "\n{}", ed.trace_tail(12));
    peer.wait_text(PATH, "aX\nb\n", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_typing_before_a_newline_while_a_peer_appends_a_line_stays_on_its_line() {
    typing_before_a_newline_while_a_peer_appends_a_line(Kind::VsCode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_typing_before_a_newline_while_a_peer_appends_a_line_stays_on_its_line() {
    typing_before_a_newline_while_a_peer_appends_a_line(Kind::Helix).await;
}

/// An applied edit comes back as a didChange (the echo); the bridge must recognise it and not
/// apply it a second time — also when Neovim re-derives it as a whole-line replacement.
async fn echo_is_not_applied_twice(kind: Kind) {
    let (_db, server, room, peer) = setup(INITIAL).await;
    let ed = FakeEditor::builder(kind)
        .debounce(Duration::ZERO)
        .join(&server, &room, PATH)
        .await;
    peer.insert(PATH, chars("hello\nwo") as u32, "🎉XX");
    let expected = "hello\nwo🎉XXrld\n";
    ed.wait_text(PATH, expected, WAIT).await;
    // Let any duplicate show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert_eq!(text, expected);
    assert_eq!(ed.stats().apply_edits, 1, "one edit, one applyEdit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_echo_is_not_applied_twice() {
    echo_is_not_applied_twice(Kind::VsCode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_line_diff_echo_is_not_applied_twice() {
    echo_is_not_applied_twice(Kind::Neovim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_echo_is_not_applied_twice() {
    echo_is_not_applied_twice(Kind::Helix).await;
}

/// A wide change (`:%s` touching lines 2 and 999 of 1,000, reported as one change from line 2
/// to line 999) reaches the room as the two lines it changes, so a peer's concurrent typing
/// on line 500 stays where the peer put it. (Re-sending the span deleted and re-inserted 997
/// unchanged lines: the peer's text landed at an end of the span.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_change_keeps_a_peers_concurrent_typing_in_place() {
    let lines: Vec<String> = (1..=1000).map(|i| format!("line {i} = {i}\n")).collect();
    let initial = lines.concat();
    let (_db, server, room, peer) = setup(&initial).await;
    let ed = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, PATH).await;
    ed.hold_apply_edits();
    peer.insert_after(PATH, "line 500 = 500", " # peer");
    ed.wait_held_apply_edits(1, WAIT).await;
    let mut changed = lines.clone();
    changed[1] = "line two = 2\n".into();
    changed[998] = "line 999 = nine\n".into();
    let start = chars(&lines[..1].concat());
    let end = chars(&lines[..999].concat());
    ed.replace(PATH, start, end, &changed[1..999].concat());
    ed.release_apply_edits();
    changed[499] = "line 500 = 500 # peer\n".into();
    let expected = changed.concat();
    let text = converge(&server, &room, PATH, &[&ed], WAIT).await;
    assert!(
        text == expected,
        "the peer's text moved:\n{}",
        ed.trace_tail(6)
    );
    peer.wait_text(PATH, &expected, WAIT).await;
}
