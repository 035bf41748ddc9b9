//! What Neovim really does, with the plugin (`editors/neovim`) in real headless Neovims 0.11,
//! each with its own real `duet-lsp`, a real `duet-server` and the stock Yjs client
//! (`tests/node/client.mjs`) as a peer: the cases measured in real use where someone's work
//! was lost or Neovim got in the way (`docs/design.md`, "How the editors behave (measured),
//! and what the bridge does about it", and "Undo means your own edits"). Each test fails when
//! its case comes back:
//!
//! - typing at the very end of a file: Neovim's implicit final line break;
//! - `u` and `<C-r>` undo and redo one's own edits, never a peer's;
//! - a duet message never takes a key, whatever the width of the screen, nor does Neovim's
//!   own word about a peer's edit that came for an old version;
//! - `:%s` over a whole file reaches peers as small updates, and a peer's edit inside survives;
//! - a failed `:DuetJoin` keeps the room;
//! - a buffer that sends invalid UTF-8 is dropped from the room, and the others go on.

use std::time::Duration;

use duet_e2e::eventually;
use duet_e2e::node::NodeClient;
use duet_e2e::nvim::{workspace_with, Nvims, WAIT};
use duet_e2e::server::{Backend, Database, RoomRef, Server, TempDir};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};
use tokio::time::Instant;

const ERROR: i64 = 4;

/// The bridge makes one undo step of a burst of typing (edits less than 500 ms apart): edits
/// meant as separate steps are made at least this far apart.
const UNDO_BURST: Duration = Duration::from_millis(600);

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The plugin's options for a Neovim named `name` that joins `invite` at start.
fn joining(name: &str, color: &str, invite: &str) -> Value {
    json!({"name": name, "color": color, "invite": invite})
}

/// The lines of the buffer of `file` in Neovim `name`.
const LINES: &str = "return vim.api.nvim_buf_get_lines(vim.fn.bufnr(...), 0, -1, true)";

/// Waits until the buffer of `file` in Neovim `name` has exactly `lines`.
/// A Neovim "A" (ann) on a workspace `label` holding `files`, with `open` open, joined to the
/// room of `invite`. Keep the workspace as long as Neovim runs.
async fn ann_joins(
    label: &str,
    files: &[(&str, &str)],
    open: &[&str],
    invite: &str,
) -> (TempDir, Nvims) {
    let ws = workspace_with(label, files);
    let mut nv = Nvims::spawn().await;
    nv.start("A", &ws.0, open, joining("ann", "#e06c75", invite))
        .await;
    (ws, nv)
}

/// Ann in Neovim, with `file` (reading "one\n") open, and bob, a named raw Yjs peer, both in
/// `room`.
async fn ann_and_bob(
    label: &str,
    server: &Server,
    room: &RoomRef,
    file: &str,
) -> (TempDir, Nvims, YClient) {
    let (ws, nv) = ann_joins(label, &[(file, "one\n")], &[file], &server.ws_url(room)).await;
    let bob = YClient::join(&server.ws_url(room)).await;
    bob.set_presence(json!({"user": {"name": "bob", "color": "#61afef"}}));
    (ws, nv, bob)
}

async fn wait_lines(nv: &mut Nvims, name: &str, file: &str, lines: &[&str]) {
    let want = json!(lines);
    nv.wait_for(
        name,
        &format!("{file} to read {want}"),
        LINES,
        json!([file]),
        WAIT,
        |l| *l == want,
    )
    .await;
}

/// Waits until Neovim `name` has a loaded buffer for `file`.
async fn wait_buffer(nv: &mut Nvims, file: &str) {
    nv.wait_for(
        "A",
        &format!("a buffer for {file}"),
        "local b = vim.fn.bufnr(...) return b ~= -1 and vim.api.nvim_buf_is_loaded(b)",
        json!([file]),
        WAIT,
        |loaded| *loaded == json!(true),
    )
    .await;
}

/// Waits until the server's copy of `file` is `text`.
async fn wait_server(server: &Server, room: &RoomRef, file: &str, text: &str) {
    let what = format!("the server's {file} to read {text:?}");
    eventually(WAIT, &what, || async {
        (server.file(room, file).await.as_deref() == Some(text)).then_some(())
    })
    .await;
}

/// Waits until the stock Yjs peer's `file` is `text`.
async fn wait_peer(peer: &mut NodeClient, file: &str, text: &str) {
    let reply = peer
        .call(json!({"cmd": "waitText", "file": file, "text": text, "timeoutMs": WAIT.as_millis() as u64}))
        .await;
    assert_eq!(
        reply["ok"],
        json!(true),
        "the peer's {file} never read {text:?}: {reply}"
    );
}

/// Waits until every Neovim in `names` and the server have `text` in `file`.
async fn converge(
    nv: &mut Nvims,
    names: &[&str],
    server: &Server,
    room: &RoomRef,
    file: &str,
    text: &str,
) {
    for name in names {
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .unwrap_or(text)
            .split('\n')
            .collect();
        wait_lines(nv, name, file, &lines).await;
    }
    wait_server(server, room, file, text).await;
}

/// Waits until Neovim `name`'s cursor is at (1-based line, 0-based byte column).
async fn wait_cursor(nv: &mut Nvims, name: &str, line: i64, col: i64) {
    nv.wait_for(
        name,
        &format!("the cursor at line {line}, column {col}"),
        "return vim.api.nvim_win_get_cursor(0)",
        json!([]),
        WAIT,
        |c| *c == json!([line, col]),
    )
    .await;
}

/// Asserts that Neovim `name` is not waiting in a prompt (which would take the next key).
async fn assert_not_blocked(nv: &mut Nvims, name: &str, when: &str) {
    let mode = nv.mode(name).await;
    assert!(
        mode["blocking"] == json!(false),
        "{name} waits in a prompt ({mode}) {when}: the next key typed would be taken by it"
    );
}

// ---------------------------------------------------------------------------------------------
// End of file.

/// A peer types at the very end of a file that ends with a line break (Neovim shows that
/// break as its implicit end of line): the keystrokes stay on one line for everyone. And a
/// Neovim that joins a room whose files have no final line break does not add one, even when
/// its user types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_at_the_end_of_a_file_stays_on_one_line() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let files = [
        ("main.py", "x = 1\n"),
        ("blank.py", "x = 1\n\n"),
        ("noeol.py", "x = 1\ny = 2"),
        ("absent.py", "x = 1\ny = 2"),
    ];
    let room = server.create_room_with(&files).await;
    // Every file on disk as the room has it, but absent.py, which only the room has.
    let (_ws, mut nv) =
        ann_joins("nvim-eof", &files[..3], &["main.py"], &server.ws_url(&room)).await;
    for (file, _) in &files[1..] {
        nv.cmd("A", &format!("edit {file}")).await;
    }
    wait_lines(&mut nv, "A", "absent.py", &["x = 1", "y = 2"]).await;

    let mut peer = NodeClient::spawn();
    peer.connect(&server.ws_base(), &room).await;
    for (file, before, lines) in [
        ("main.py", "x = 1\n", &["x = 1", "abc def"][..]),
        ("blank.py", "x = 1\n\n", &["x = 1", "", "abc def"][..]),
    ] {
        peer.ok(
            json!({"cmd": "type", "file": file, "text": "abc def", "delayMs": 30, "at": "end"}),
        )
        .await;
        let after = format!("{before}abc def");
        wait_lines(&mut nv, "A", file, lines).await;
        wait_server(&server, &room, file, &after).await;
        wait_peer(&mut peer, file, &after).await;
    }

    // Neovim's user types in the middle: the room's text still has no final line break.
    for file in ["noeol.py", "absent.py"] {
        nv.cmd("A", &format!("buffer {file}")).await;
        nv.input("A", "ggA # one<Esc>").await;
        wait_lines(&mut nv, "A", file, &["x = 1 # one", "y = 2"]).await;
        wait_server(&server, &room, file, "x = 1 # one\ny = 2").await;
        wait_peer(&mut peer, file, "x = 1 # one\ny = 2").await;
    }
    nv.quit().await;
}

// ---------------------------------------------------------------------------------------------
// Undo.

/// Two Neovims edit in turn; each undoes and redoes (`u`, `2u`, `<C-r>`, `2<C-r>`,
/// `:DuetUndo`): only its own edits change, a peer's text typed inside one of mine survives my
/// undo, the cursor goes where the undone change was, and everyone (both Neovims, the server)
/// has the same text at every step. `setup({ undo = false })` keeps Neovim's own `u`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_and_redo_change_only_your_own_edits() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let file = "notes.txt";
    let initial = "alpha beta\ngamma delta\nepsilon zeta\n";
    let room = server.create_room_with(&[(file, initial)]).await;
    let ws_a = workspace_with("nvim-undo-a", &[(file, initial)]);
    let ws_b = workspace_with("nvim-undo-b", &[(file, initial)]);
    let mut nv = Nvims::spawn().await;
    for (name, dir, color) in [("A", &ws_a, "#e06c75"), ("B", &ws_b, "#61afef")] {
        let options = joining(&format!("nvim-{name}"), color, &server.ws_url(&room));
        nv.start(name, &dir.0, &[file], options).await;
    }
    let short = &room.id[..8];
    for name in ["A", "B"] {
        nv.wait_statusline(name, &format!("duet: {short} · 1 peer"))
            .await;
    }
    let both = ["A", "B"];

    // Each edit is its own undo step: typed, seen by everyone, and a burst's time apart.
    let edits = [
        // A: "A1 " before "beta".
        (
            "A",
            "ggfbiA1 <Esc>",
            "alpha A1 beta\ngamma delta\nepsilon zeta\n",
        ),
        // B: " B1" at the end of line 2.
        (
            "B",
            "2GA B1<Esc>",
            "alpha A1 beta\ngamma delta B1\nepsilon zeta\n",
        ),
        // A: "A2 " at the start of line 3.
        (
            "A",
            "3GIA2 <Esc>",
            "alpha A1 beta\ngamma delta B1\nA2 epsilon zeta\n",
        ),
        // B: "b" inside A's "A1".
        (
            "B",
            "gg0fAab<Esc>",
            "alpha Ab1 beta\ngamma delta B1\nA2 epsilon zeta\n",
        ),
        // A: a new last line.
        (
            "A",
            "GoA3<Esc>",
            "alpha Ab1 beta\ngamma delta B1\nA2 epsilon zeta\nA3\n",
        ),
    ];
    for (name, keys, text) in edits {
        nv.input(name, keys).await;
        converge(&mut nv, &both, &server, &room, file, text).await;
        tokio::time::sleep(UNDO_BURST).await;
    }

    // A undoes two steps: A3 and A2 go, B's edits stay; A's cursor goes where A2 was.
    nv.input("A", "2u").await;
    let text = "alpha Ab1 beta\ngamma delta B1\nepsilon zeta\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    wait_cursor(&mut nv, "A", 3, 0).await;
    // A undoes A1: B's "b" typed inside it stays.
    nv.input("A", "u").await;
    let text = "alpha bbeta\ngamma delta B1\nepsilon zeta\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    wait_cursor(&mut nv, "A", 1, 6).await;
    // B undoes its "b".
    nv.input("B", "u").await;
    let text = "alpha beta\ngamma delta B1\nepsilon zeta\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    wait_cursor(&mut nv, "B", 1, 6).await;
    // A redoes A1, then A2 and A3 at once.
    nv.input("A", "<C-r>").await;
    let text = "alpha A1 beta\ngamma delta B1\nepsilon zeta\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    wait_cursor(&mut nv, "A", 1, 6).await;
    nv.input("A", "2<C-r>").await;
    let text = "alpha A1 beta\ngamma delta B1\nA2 epsilon zeta\nA3\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    // B undoes and redoes B1.
    nv.input("B", "u").await;
    let text = "alpha A1 beta\ngamma delta\nA2 epsilon zeta\nA3\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    wait_cursor(&mut nv, "B", 2, 10).await;
    nv.input("B", "<C-r>").await;
    let text = "alpha A1 beta\ngamma delta B1\nA2 epsilon zeta\nA3\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    // A undoes more than it has: all three of its edits go, B's stay.
    nv.input("A", "9u").await;
    let text = "alpha beta\ngamma delta B1\nepsilon zeta\n";
    converge(&mut nv, &both, &server, &room, file, text).await;
    // Nothing of A's left: said, and nothing changes.
    nv.clear_notes("A").await;
    nv.cmd("A", "DuetUndo").await;
    nv.wait_note("A", &format!("nothing of yours to undo in {file}"), None)
        .await;
    // B undoes its last edit: everyone is back to the start.
    nv.input("B", "u").await;
    converge(&mut nv, &both, &server, &room, file, initial).await;
    let notes = nv.notes("A").await;
    assert!(
        !notes.iter().any(|(level, _)| *level >= 3),
        "no warnings or errors: {notes:?}"
    );

    // With `undo = false`, `u` and <C-r> are Neovim's own.
    let map_of = "local m = vim.fn.maparg(..., 'n', false, true)
                  return m.desc or ''";
    for key in ["u", "<C-R>"] {
        let desc = nv.lua("A", map_of, json!([key])).await;
        assert!(
            desc.as_str().unwrap().starts_with("duet: "),
            "{key}: {desc}"
        );
    }
    let ws_c = workspace_with("nvim-undo-c", &[(file, initial)]);
    nv.start("C", &ws_c.0, &[file], json!({"undo": false}))
        .await;
    nv.wait_for(
        "C",
        "the duet client attached",
        "local c = require('duet').client()
         return c ~= nil and vim.lsp.buf_is_attached(0, c.id)",
        json!([]),
        WAIT,
        |attached| *attached == json!(true),
    )
    .await;
    for key in ["u", "<C-R>"] {
        assert_eq!(nv.lua("C", map_of, json!([key])).await, json!(""), "{key}");
    }
    nv.quit().await;
}

// ---------------------------------------------------------------------------------------------
// Messages.

/// A narrow Neovim (40 columns) whose user types while the server dies: the offline notice is
/// wider than the screen, yet Neovim never waits in a prompt and every key typed after it
/// arrives in the buffer; so do keys typed after `:DuetStatus`. `:DuetMessages` has the whole
/// notice, and everything reaches the server when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_takes_a_key() {
    const WIDTH: u32 = 40;
    let db = Database::new(Backend::Sqlite);
    let mut server = Server::start(&db, &[]).await;
    let file = "notes.txt";
    let room = server.create_room_with(&[(file, "start\n")]).await;
    let (_ws, mut nv) = ann_joins(
        "nvim-narrow",
        &[(file, "start\n")],
        &[file],
        &server.ws_url(&room),
    )
    .await;
    nv.ui("A", WIDTH, 12).await;
    nv.wait_statusline("A", &format!("duet: {} · 0 peers", &room.id[..8]))
        .await;

    // Typing (insert mode) when the server dies.
    nv.input("A", "Abefore").await;
    wait_server(&server, &room, file, "startbefore\n").await;
    server.kill9();
    let deadline = Instant::now() + WAIT;
    let notice = loop {
        assert_not_blocked(&mut nv, "A", "while the server is away").await;
        let notes = nv.notes("A").await;
        if let Some((_, msg)) = notes.into_iter().find(|(_, m)| m.contains("offline")) {
            break msg;
        }
        assert!(Instant::now() < deadline, "no offline notice");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        notice.chars().count() > WIDTH as usize,
        "the notice is wider than the screen: {notice:?}"
    );
    // Right after the notice, the user goes on typing.
    nv.input("A", " after").await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert_not_blocked(&mut nv, "A", "after the offline notice").await;
        let lines = nv.lua("A", LINES, json!([file])).await;
        if lines == json!(["startbefore after"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the keys typed after the notice: {lines}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nv.input("A", "<Esc>").await;

    // What the user asks for, several lines long, takes no key either.
    nv.input("A", ":DuetStatus<CR>").await;
    nv.wait_float("A", "· offline since ").await;
    nv.input("A", "A!<Esc>").await;
    wait_lines(&mut nv, "A", file, &["startbefore after!"]).await;
    assert_not_blocked(&mut nv, "A", "after :DuetStatus").await;
    // The whole notice is kept.
    nv.input("A", ":DuetMessages<CR>").await;
    let shown = nv.wait_float("A", "offline").await;
    let flat: String = shown.split_whitespace().collect::<Vec<_>>().join(" ");
    let whole: String = notice.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains(&whole), "{whole:?} in {shown:?}");
    assert_not_blocked(&mut nv, "A", "after :DuetMessages").await;

    server.restart().await;
    wait_server(&server, &room, file, "startbefore after!\n").await;
    assert_not_blocked(&mut nv, "A", "back online").await;

    // What the command line gets always fits, wide characters included.
    let fitted = nv
        .lua(
            "A",
            "local out = {}
             for width = 2, 60 do
               local line = require('duet.messages').fit(..., width)
               table.insert(out, { width, vim.fn.strdisplaywidth(line), line })
             end
             return out",
            json!(["duet: 世界 🎉 naïve\tcafé, a message of several lines\nthe second"]),
        )
        .await;
    for fit in fitted.as_array().unwrap() {
        assert!(fit[1].as_i64() <= fit[0].as_i64(), "{fit}");
        assert!(!fit[2].as_str().unwrap().contains('\n'), "{fit}");
    }
    nv.quit().await;
}

/// Typing while a peer types (an 80-column screen): Neovim skips a peer's edit made for a
/// version it has moved past (the bridge sends it again) and printed "Buffer file:///… newer
/// than edits.", which, wider than the command line, opened the hit-enter prompt that took the
/// next key typed. Neovim never waits in a prompt, and everything typed on both sides arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_while_a_peer_types_takes_no_key() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let file = "notes.txt";
    let room = server.create_room_with(&[(file, "top\nmine\n")]).await;
    let (_ws, mut nv) = ann_joins(
        "nvim-race",
        &[(file, "top\nmine\n")],
        &[file],
        &server.ws_url(&room),
    )
    .await;
    nv.ui("A", 80, 24).await;
    nv.wait_statusline("A", &format!("duet: {} · 0 peers", &room.id[..8]))
        .await;
    let mut peer = NodeClient::spawn();
    peer.connect(&server.ws_base(), &room).await;
    // Count the peer's edits that came for a version Neovim had moved past.
    nv.lua(
        "A",
        "local client = require('duet').client()
         local handler = client.handlers['workspace/applyEdit']
         vim.g.stale_edits = 0
         client.handlers['workspace/applyEdit'] = function(...)
           local answer = handler(...)
           if not answer.applied then vim.g.stale_edits = vim.g.stale_edits + 1 end
           return answer
         end",
        json!([]),
    )
    .await;

    let theirs = "abcdefghij".repeat(30);
    let ours = "0123456789".repeat(30);
    let steps = json!([["keys", "2GA"], ["type", ours], ["keys", "<Esc>"]]);
    nv.ok(json!({"op": "type", "name": "A", "steps": steps, "seed": 1, "chunk_sleep_ms": 10}))
        .await;
    peer.ok(json!({"cmd": "type", "file": file, "text": theirs, "delayMs": 5, "at": 3}))
        .await;
    let expected = format!("top{theirs}\nmine{ours}\n");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        assert_not_blocked(&mut nv, "A", "while both type").await;
        if server.file(&room, file).await.as_deref() == Some(expected.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never had everything typed: {:?}",
            server.file(&room, file).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nv.ok(json!({"op": "type_wait", "name": "A", "timeout": 50}))
        .await;
    converge(&mut nv, &["A"], &server, &room, file, &expected).await;
    // The race this test is about happened (about a hundred times a run on a 2-core machine).
    let stale = nv.lua("A", "return vim.g.stale_edits", json!([])).await;
    assert!(
        stale.as_i64().unwrap() > 0,
        "no edit came for an old version"
    );
    nv.quit().await;
}

// ---------------------------------------------------------------------------------------------
// Wide changes.

/// `:%s` changing lines 2 and 999 of a 1,000-line file is one `didChange` spanning nearly the
/// whole file: it reaches the room as small updates, and a stock Yjs peer's concurrent edit in
/// the middle of that span stays where it was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_substitution_sends_only_what_differs() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let file = "big.txt";
    let line = |n: usize, word: &str| format!("line {n:04} of the file with some text: {word}\n");
    let text_with = |word_at: &dyn Fn(usize) -> &'static str| -> String {
        (1..=1000).map(|n| line(n, word_at(n))).collect()
    };
    let before = text_with(&|n| if n == 2 || n == 999 { "foo" } else { "bar" });
    let room = server.create_room_with(&[(file, &before)]).await;
    let (_ws, mut nv) = ann_joins(
        "nvim-wide",
        &[(file, &before)],
        &[file],
        &server.ws_url(&room),
    )
    .await;
    nv.wait_statusline("A", &format!("duet: {} · 0 peers", &room.id[..8]))
        .await;

    // The peer edits line 500 while it is cut off from the room, so that its edit and the
    // substitution are concurrent.
    let mut peer = NodeClient::spawn();
    peer.connect(&server.ws_base(), &room).await;
    peer.ok(json!({"cmd": "disconnect"})).await;
    let at = before.find("line 0500").unwrap() + "line 0500 ".len();
    peer.ok(json!({"cmd": "insert", "file": file, "index": at, "text": "PEER "}))
        .await;

    let received = server.metric("duet_bytes_received_total").await;
    nv.cmd("A", "%s/foo/FOO/").await;
    let substituted = text_with(&|n| if n == 2 || n == 999 { "FOO" } else { "bar" });
    wait_server(&server, &room, file, &substituted).await;
    let sent = server.metric("duet_bytes_received_total").await - received;
    // What the bridge sent the room (and the room each peer): a few hundred bytes at most
    // (the two changes and a presence update), against a file of 40 KB.
    println!(
        ":%s changing lines 2 and 999 sent the room {sent} bytes ({}-byte file)",
        before.len()
    );
    assert!(
        sent < 1024,
        "{sent} bytes for 2 changed lines of a {}-byte file",
        before.len()
    );

    peer.ok(json!({"cmd": "reconnect"})).await;
    let expected = substituted.replacen("line 0500 ", "line 0500 PEER ", 1);
    wait_peer(&mut peer, file, &expected).await;
    wait_server(&server, &room, file, &expected).await;
    let lines: Vec<&str> = expected.lines().collect();
    wait_lines(&mut nv, "A", file, &lines).await;
    nv.quit().await;
}

// ---------------------------------------------------------------------------------------------
// A failed join.

/// `:DuetJoin` with a wrong token while in a room: said, and the room stays — the statusline,
/// `:DuetStatus`, the peers, and typing both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_join_keeps_the_room() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let file = "notes.txt";
    let room = server.create_room_with(&[(file, "one\n")]).await;
    let other = server.create_room_with(&[(file, "other\n")]).await;
    let (_ws, mut nv, bob) = ann_and_bob("nvim-join", &server, &room, file).await;
    let short = &room.id[..8];
    let statusline = format!("duet: {short} · 1 peer");
    nv.wait_statusline("A", &statusline).await;

    let wrong = RoomRef {
        id: other.id.clone(),
        token: "wrong".into(),
    };
    nv.cmd("A", &format!("DuetJoin {}", server.ws_url(&wrong)))
        .await;
    let note = nv
        .wait_note("A", "you are still in room", Some(ERROR))
        .await;
    assert!(note.contains(short), "{note}");
    assert!(note.contains("token"), "{note}");
    assert_eq!(nv.statusline("A").await, statusline);
    nv.cmd("A", "DuetStatus").await;
    let status = nv.wait_float("A", &format!("- room: {}", room.id)).await;
    assert!(status.contains("· connected since "), "{status}");
    assert!(status.contains("- bob — "), "{status}");

    // Typing goes on, both ways.
    nv.input("A", "Goafter<Esc>").await;
    wait_server(&server, &room, file, "one\nafter\n").await;
    bob.append(file, "bob\n");
    wait_lines(&mut nv, "A", file, &["one", "after", "bob"]).await;
    assert_eq!(server.file(&other, file).await.as_deref(), Some("other\n"));
    assert_eq!(nv.statusline("A").await, statusline);
    // Said once (the bridge's message, not also the command's error).
    let said = nv.notes("A").await;
    let failures = said.iter().filter(|(_, m)| m.contains("token")).count();
    assert_eq!(failures, 1, "{said:?}");
    nv.quit().await;
}

// ---------------------------------------------------------------------------------------------
// Invalid UTF-8.

/// Typing at a byte column inside a multibyte character makes Neovim send invalid UTF-8: the
/// user is told which file stopped being shared, the room keeps that file's last good text, and
/// another shared buffer in the same Neovim keeps syncing both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_drops_only_that_file() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server
        .create_room_with(&[("a.txt", "café au lait\n"), ("b.txt", "other\n")])
        .await;
    let (_ws, mut nv) = ann_joins(
        "nvim-utf8",
        &[("a.txt", "café au lait\n"), ("b.txt", "other\n")],
        &["b.txt"],
        &server.ws_url(&room),
    )
    .await;
    nv.cmd("A", "edit a.txt").await;
    nv.wait_statusline("A", &format!("duet: {} · 0 peers", &room.id[..8]))
        .await;
    let bob = YClient::join(&server.ws_url(&room)).await;
    // Both files are shared.
    nv.input("A", "A!<Esc>").await;
    wait_server(&server, &room, "a.txt", "café au lait!\n").await;
    bob.append("b.txt", "bob 1\n");
    wait_lines(&mut nv, "A", "b.txt", &["other", "bob 1"]).await;

    // The cursor put inside "é" (bytes 3 and 4 of the line) in insert mode: Neovim inserts
    // what is typed between its two bytes.
    nv.input("A", "i").await;
    nv.wait_for(
        "A",
        "insert mode",
        "return vim.api.nvim_get_mode().mode",
        json!([]),
        WAIT,
        |mode| *mode == json!("i"),
    )
    .await;
    nv.lua("A", "vim.api.nvim_win_set_cursor(0, { 1, 4 })", json!([]))
        .await;
    nv.input("A", "x<Esc>").await;
    let note = nv
        .wait_note("A", "a.txt is no longer shared", Some(ERROR))
        .await;
    assert!(note.contains("UTF-8"), "{note}");
    assert_eq!(
        server.file(&room, "a.txt").await.as_deref(),
        Some("café au lait!\n")
    );

    // b.txt goes on, both ways.
    nv.cmd("A", "buffer b.txt").await;
    nv.input("A", "Goann<Esc>").await;
    wait_server(&server, &room, "b.txt", "other\nbob 1\nann\n").await;
    bob.append("b.txt", "bob 2\n");
    wait_lines(&mut nv, "A", "b.txt", &["other", "bob 1", "ann", "bob 2"]).await;
    nv.quit().await;
}

/// Waits until Neovim A's tab has `count` windows in diff mode; returns each as
/// `<buffer name>=<lines joined by |>`, sorted.
async fn diff_windows(nv: &mut Nvims, what: &str, count: usize) -> Vec<String> {
    let code = "local out = {}
         for _, w in ipairs(vim.api.nvim_tabpage_list_wins(0)) do
           if vim.wo[w].diff then
             local b = vim.api.nvim_win_get_buf(w)
             table.insert(out, vim.api.nvim_buf_get_name(b) .. '=' .. table.concat(vim.api.nvim_buf_get_lines(b, 0, -1, true), '|'))
           end
         end
         table.sort(out)
         return out";
    let windows = nv
        .wait_for("A", what, code, json!([]), WAIT, |v| {
            v.as_array().is_some_and(|a| a.len() == count)
        })
        .await;
    windows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

/// The room's history in Neovim: `:DuetSave`, `:DuetHistory` (the picker, then the file beside
/// its text at the version picked, in diff mode), `:DuetRestore` (the restore reaches the
/// buffer and the peer); and, back in the room after `:DuetLeave`, what changed meanwhile and
/// who changed it, with `:DuetAway` showing it as a diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_diff_restore_and_what_changed_while_away() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let file = "notes.txt";
    let room = server.create_room_with(&[(file, "one\n")]).await;
    let (_ws, mut nv, bob) = ann_and_bob("nvim-history", &server, &room, file).await;
    nv.wait_statusline("A", &format!("duet: {} · 1 peer", &room.id[..8]))
        .await;
    nv.input("A", "Gotwo<Esc>").await;
    wait_server(&server, &room, file, "one\ntwo\n").await;
    nv.cmd("A", "DuetSave good").await;
    nv.wait_note("A", "saved version 1", None).await;

    // The damage, then the history: the picker lists the version, the diff shows it.
    nv.input("A", "ggdGibroken<Esc>").await;
    wait_server(&server, &room, file, "broken\n").await;
    nv.lua(
        "A",
        "vim.ui.select = function(items, opts, on_choice)
           _G.duet_picked = vim.tbl_map(opts.format_item, items)
           on_choice(items[1], 1)
         end",
        json!([]),
    )
    .await;
    nv.cmd("A", "DuetHistory").await;
    let picked = nv
        .wait_for(
            "A",
            "the picker",
            "return _G.duet_picked",
            json!([]),
            WAIT,
            |v| v.is_array(),
        )
        .await;
    let line = picked[0].as_str().unwrap_or_default();
    assert!(
        line.starts_with("#1  ") && line.contains("ann") && line.ends_with("\"good\""),
        "{line}"
    );
    let windows = diff_windows(&mut nv, "the diff", 2).await;
    // Sorted: the file's path (absolute) first, then the version's.
    assert!(windows[0].ends_with("/notes.txt=broken"), "{windows:?}");
    assert_eq!(windows[1], "duet://version/1/notes.txt=one|two");

    // :DuetRestore: the buffer, the server and the peer have the version's text again.
    nv.cmd("A", "DuetRestore").await;
    wait_lines(&mut nv, "A", file, &["one", "two"]).await;
    wait_server(&server, &room, file, "one\ntwo\n").await;
    bob.wait_text(file, "one\ntwo\n", WAIT).await;
    nv.wait_note("A", "version 2 holds what it replaced", None)
        .await;
    diff_windows(&mut nv, "the diff to close", 0).await;

    // Away: bob edits while ann is out of the room.
    nv.cmd("A", "DuetLeave").await;
    nv.wait_statusline("A", "").await;
    bob.append(file, "bob was here\n");
    wait_server(&server, &room, file, "one\ntwo\nbob was here\n").await;
    nv.clear_notes("A").await;
    nv.cmd("A", &format!("DuetJoin {}", server.ws_url(&room)))
        .await;
    nv.wait_note("A", "while you were away, bob changed notes.txt", None)
        .await;
    nv.wait_note("A", ":DuetAway shows the changes", None).await;
    nv.cmd("A", "DuetAway").await;
    let windows = diff_windows(&mut nv, "the diff of what changed", 2).await;
    assert!(
        windows[0].ends_with("/notes.txt=one|two|bob was here"),
        "{windows:?}"
    );
    assert_eq!(windows[1], "duet://away/notes.txt=one|two");
    nv.quit().await;
}

// ---------------------------------------------------------------------------------------------
// Room files and peers a newcomer does not have.

/// The room holds files ann's folder lacks; bob (a stock Yjs client) is in one of them.
/// `:DuetPeers` says where bob is; `:DuetJump bob` opens his file — created in the folder from
/// the room's text — at his cursor; a file opened with `:e` that the folder lacks gets the
/// room's text, and bob's label sits at his cursor there, not at line 1; `:DuetFiles` offers the
/// room's files through `vim.ui.select` (a picker plugin stands in for Neovim's own) and opens
/// the one picked; a file bob adds is announced; typing in an opened file reaches the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_finds_the_rooms_files_and_its_peers() {
    const MAIN: &str = "import util\nprint(util.f())\n";
    const UTIL: &str = "def f():\n    return 1\n";
    const NOTES: &str = "# notes\nfirst point\n";
    const TODO: &str = "write tests\n";
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server
        .create_room_with(&[
            ("main.py", MAIN),
            ("lib/util.py", UTIL),
            ("docs/notes.md", NOTES),
            ("todo.txt", TODO),
        ])
        .await;
    let (ws, mut nv) = ann_joins(
        "nvim-newcomer",
        &[("main.py", MAIN)],
        &["main.py"],
        &server.ws_url(&room),
    )
    .await;
    let bob = YClient::join(&server.ws_url(&room)).await;
    let at = |text: &str, needle: &str| text[..text.find(needle).unwrap()].encode_utf16().count();
    let presence = |file: &str, at: usize| {
        json!({"user": {"name": "bob", "color": "#61afef"},
               "cursor": {"file": file, "anchor": at, "head": at}})
    };
    bob.set_presence(presence("lib/util.py", at(UTIL, "return")));
    let short = &room.id[..8];
    nv.wait_statusline("A", &format!("duet: {short} · 1 peer"))
        .await;

    nv.cmd("A", "DuetPeers").await;
    let peers = nv.wait_float("A", "duet: 1 peer").await;
    assert!(
        peers.contains("lib/util.py line 2 (not open here)"),
        "{peers}"
    );

    nv.cmd("A", "DuetJump bob").await;
    wait_buffer(&mut nv, "lib/util.py").await;
    wait_lines(&mut nv, "A", "lib/util.py", &["def f():", "    return 1"]).await;
    wait_cursor(&mut nv, "A", 2, 4).await;
    assert_eq!(
        std::fs::read_to_string(ws.0.join("lib/util.py"))
            .ok()
            .as_deref(),
        Some(UTIL)
    );

    // A file the folder lacks, opened by hand while bob is in it: the room's text arrives,
    // and bob's label is drawn at his cursor (line 2), not where the empty buffer put it.
    bob.set_presence(presence("docs/notes.md", at(NOTES, "point")));
    nv.cmd("A", "edit docs/notes.md").await;
    wait_lines(&mut nv, "A", "docs/notes.md", &["# notes", "first point"]).await;
    nv.wait_for(
        "A",
        "bob's label at his cursor in notes.md",
        "local ns = vim.api.nvim_get_namespaces().duet_peers
         local out = {}
         for _, m in ipairs(vim.api.nvim_buf_get_extmarks(vim.fn.bufnr('docs/notes.md'), ns, 0, -1, { details = true })) do
           if m[4].virt_text then table.insert(out, { m[2], m[3] }) end
         end
         return out",
        json!([]),
        WAIT,
        |marks| *marks == json!([[1, 6]]),
    )
    .await;

    // :DuetFiles through vim.ui.select, as a picker plugin would answer it: todo.txt.
    nv.lua(
        "A",
        "vim.ui.select = function(items, opts, on_choice)
           _G.offered = {}
           for _, item in ipairs(items) do
             table.insert(_G.offered, opts.format_item and opts.format_item(item) or item)
           end
           for i, item in ipairs(items) do
             if item == 'todo.txt' then return on_choice(item, i) end
           end
         end",
        json!([]),
    )
    .await;
    nv.cmd("A", "DuetFiles").await;
    wait_buffer(&mut nv, "todo.txt").await;
    wait_lines(&mut nv, "A", "todo.txt", &["write tests"]).await;
    let offered = nv.lua("A", "return _G.offered", json!([])).await;
    assert_eq!(
        offered,
        json!([
            "docs/notes.md",
            "lib/util.py",
            "main.py",
            "todo.txt  (not in your folder yet)"
        ]),
        "the room's files, those the folder lacks marked"
    );
    assert_eq!(
        nv.lua("A", "return vim.fn.expand('%:t')", json!([])).await,
        json!("todo.txt")
    );
    assert!(ws.0.join("todo.txt").exists());

    bob.insert("ideas.txt", 0, "more\n");
    nv.wait_note("A", "duet: new in the room: ideas.txt", None)
        .await;

    nv.input("A", "ggOtest the newcomer<Esc>").await;
    wait_server(
        &server,
        &room,
        "todo.txt",
        "test the newcomer\nwrite tests\n",
    )
    .await;

    // :DuetStatus: bob where he is, the files, the invite.
    nv.cmd("A", "DuetStatus").await;
    let status = nv.wait_float("A", "- bob — docs/notes.md:2").await;
    for needle in [
        format!("- room: {}", room.id),
        server.ws_url(&room),
        "- ideas.txt".into(),
        "- lib/util.py — shared".into(),
        "- todo.txt — shared".into(),
    ] {
        assert!(status.contains(&needle), "{needle:?} missing from {status}");
    }
    // docs/screenshots/neovim-status.txt is this window's text.
    let snapshot = std::env::var_os("DUET_NEOVIM_STATUS_SNAPSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("duet-neovim-status.txt"));
    std::fs::write(&snapshot, &status).expect("snapshot");

    // :DuetFollow bob, who goes to ideas.txt, which the folder lacks: Neovim follows him there.
    nv.cmd("A", "DuetFollow bob").await;
    nv.wait_note("A", "following bob", None).await;
    bob.set_presence(presence("ideas.txt", 2));
    wait_buffer(&mut nv, "ideas.txt").await;
    wait_lines(&mut nv, "A", "ideas.txt", &["more"]).await;
    wait_cursor(&mut nv, "A", 1, 2).await;
    assert!(ws.0.join("ideas.txt").exists());
    nv.quit().await;
}
