//! Getting into a room with the bridge, from each way docs/bridge.md offers (environment,
//! `initializationOptions`, `.duet.toml`, `workspace/executeCommand`), what happens to files
//! already open, the errors a person can cause (bad invite, unknown room, wrong token) and the
//! completions the bridge serves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use duet_e2e::editor::{converge, wait_server_file, FakeEditor, Kind, WAIT};
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};

const COMMANDS: [&str; 15] = [
    "duet.createRoom",
    "duet.joinRoom",
    "duet.leaveRoom",
    "duet.status",
    "duet.openFile",
    "duet.jump",
    "duet.follow",
    "duet.undo",
    "duet.redo",
    "duet.versions",
    "duet.versionText",
    "duet.saveVersion",
    "duet.restore",
    "duet.away",
    "duet.awayText",
];

async fn start() -> (Database, Server) {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    (db, server)
}

fn text_of(message: &Value) -> String {
    message["message"].as_str().unwrap_or_default().to_string()
}

/// `window/showMessage` type Error (1) or Warning (2).
fn is_problem(message: &Value) -> bool {
    matches!(message["type"].as_i64(), Some(1) | Some(2))
}

/// A file named in `message` (absolute, `file://`, or relative to the workspace) that holds
/// exactly `old`.
fn kept_copy(message: &str, workspace: &Path, old: &str) -> Option<PathBuf> {
    message
        .split(|c: char| c.is_whitespace() || "\"'`()[]<>,;".contains(c))
        .map(|t| t.trim_end_matches(['.', ':', '!']))
        .map(|t| t.strip_prefix("file://").unwrap_or(t))
        .filter(|t| !t.is_empty())
        .flat_map(|t| [PathBuf::from(t), workspace.join(t)])
        .find(|p| p.is_file() && std::fs::read_to_string(p).ok().as_deref() == Some(old))
}

fn parse_invite(invite: &str) -> RoomRef {
    let rest = invite
        .split_once("/ws/")
        .unwrap_or_else(|| panic!("not an invite: {invite}"))
        .1;
    let (id, query) = rest.split_once('?').expect("?token=");
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .expect("token=");
    RoomRef {
        id: id.to_string(),
        token: token.to_string(),
    }
}

/// What docs/bridge.md promises in `initialize`, for each editor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_advertises_the_documented_capabilities() {
    for kind in Kind::ALL {
        let ed = FakeEditor::builder(kind).start().await;
        let caps = &ed.init_result["capabilities"];
        let sync = &caps["textDocumentSync"];
        let change = sync.as_i64().or_else(|| sync["change"].as_i64());
        assert_eq!(change, Some(2), "{kind:?}: incremental sync: {caps}");
        if sync.is_object() {
            assert_eq!(sync["openClose"], true, "{kind:?}: open/close: {caps}");
        }
        assert!(
            caps["completionProvider"].is_object(),
            "{kind:?}: completion: {caps}"
        );
        let commands: Vec<&str> = caps["executeCommandProvider"]["commands"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for c in COMMANDS {
            assert!(commands.contains(&c), "{kind:?}: command {c}: {caps}");
        }
        assert!(ed.alive());
        let shutdown = ed.shutdown().await;
        assert!(shutdown.answered, "{kind:?}: {shutdown:?}\n{}", ed.report());
    }
}

/// LSP: after `shutdown`, the `exit` notification ends the server with status 0 — whether or
/// not the editor closes the server's stdin (VS Code kills a server that lingers after 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_notification_ends_the_bridge_with_stdin_still_open() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    for kind in Kind::ALL {
        let idle = FakeEditor::builder(kind).start().await;
        let shutdown = idle.shutdown().await;
        assert!(
            shutdown.clean(),
            "{kind:?}, not in a room: {shutdown:?}\n{}",
            idle.report()
        );
        let joined = FakeEditor::joined(kind, kind.name(), &server, &room, "main.py").await;
        let shutdown = joined.shutdown().await;
        assert!(
            shutdown.clean(),
            "{kind:?}, in a room: {shutdown:?}\n{}",
            joined.report()
        );
    }
}

/// A file already in the room, opened with other text: the buffer becomes the room's text (the
/// room wins, nobody else's work is overwritten), and a message says where the person's own
/// text was kept — a file that really holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_brings_the_buffer_to_the_room_text_and_keeps_the_old_text() {
    let (_db, server) = start().await;
    let room_text = "print('room')\n🎉\n";
    let mine = "print('mine')\n世界\n";
    let room = server.create_room_with(&[("main.py", room_text)]).await;
    let ed = FakeEditor::start(Kind::VsCode, &server.ws_url(&room)).await;
    // Opened at once, before the bridge has even connected: as an editor started on a file.
    ed.open("main.py", mine);
    ed.wait_text("main.py", room_text, WAIT).await;
    ed.wait_connected(WAIT).await;
    assert_eq!(
        server.file(&room, "main.py").await.as_deref(),
        Some(room_text)
    );
    let message = ed
        .wait_message("a message about main.py's previous text", WAIT, |m| {
            text_of(m).contains("main.py")
        })
        .await;
    let kept = kept_copy(&text_of(&message), ed.workspace(), mine);
    assert!(
        kept.is_some(),
        "the message should name a file holding the previous text: {message}"
    );
    // And the buffer is live.
    ed.insert("main.py", 0, "# hi\n");
    converge(&server, &room, "main.py", &[&ed], WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_not_in_room_is_added_to_the_room() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let ed = FakeEditor::joined(Kind::Neovim, "nv", &server, &room, "main.py").await;
    let text = "def new():\n    return '世界🎉'\n";
    ed.open("pkg/new.py", text);
    wait_server_file(&server, &room, "pkg/new.py", text, WAIT, &[&ed]).await;
    // Another person sees it and edits it; both ways work.
    let peer = YClient::join(&server.ws_url(&room)).await;
    assert_eq!(peer.text("pkg/new.py").as_deref(), Some(text));
    peer.insert("pkg/new.py", 0, "# peer\n");
    ed.wait_text("pkg/new.py", &format!("# peer\n{text}"), WAIT)
        .await;
    ed.type_text("pkg/new.py", 0, "#!").await;
    let all = converge(&server, &room, "pkg/new.py", &[&ed], WAIT).await;
    assert_eq!(all, format!("#!# peer\n{text}"));
}

/// A person with no invite configured joins with `duet.joinRoom <invite>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_room_command_joins_with_an_invite() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let ed = FakeEditor::builder(Kind::Helix).start().await;
    ed.open("main.py", "x = 1\n");
    let result = ed
        .execute_command("duet.joinRoom", json!([server.ws_url(&room)]))
        .await;
    assert!(result.is_ok(), "duet.joinRoom: {result:?}\n{}", ed.report());
    ed.wait_connected(WAIT).await;
    ed.type_text("main.py", 0, "y = 2\n").await;
    wait_server_file(&server, &room, "main.py", "y = 2\nx = 1\n", WAIT, &[&ed]).await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    peer.append("main.py", "z = 3\n");
    ed.wait_text("main.py", "y = 2\nx = 1\nz = 3\n", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_in_initialization_options_joins() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("a.txt", "one\n")]).await;
    let ed = FakeEditor::builder(Kind::VsCode)
        .init_options(json!({"invite": server.ws_url(&room), "name": "ann"}))
        .start()
        .await;
    ed.wait_connected(WAIT).await;
    ed.open("a.txt", "one\n");
    ed.insert("a.txt", 3, " two");
    wait_server_file(&server, &room, "a.txt", "one two\n", WAIT, &[&ed]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_room_and_token_from_the_environment_join() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("a.txt", "one\n")]).await;
    let ed = FakeEditor::builder(Kind::Neovim)
        .env("DUET_SERVER", &server.url(""))
        .env("DUET_ROOM", &room.id)
        .env("DUET_TOKEN", &room.token)
        .start()
        .await;
    ed.wait_connected(WAIT).await;
    ed.open("a.txt", "one\n");
    ed.insert("a.txt", 0, "zero ");
    wait_server_file(&server, &room, "a.txt", "zero one\n", WAIT, &[&ed]).await;
}

/// Helix has no plugins: a `.duet.toml` in the workspace is how it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duet_toml_in_the_workspace_joins() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("a.txt", "one\n")]).await;
    let toml = format!(
        "invite = \"{}\"\nname = \"hx\"\ncolor = \"#e06c75\"\n",
        server.ws_url(&room)
    );
    let ed = FakeEditor::builder(Kind::Helix)
        .file(".duet.toml", &toml)
        .start()
        .await;
    ed.wait_connected(WAIT).await;
    ed.open("a.txt", "one\n");
    ed.insert("a.txt", 4, "two\n");
    wait_server_file(&server, &room, "a.txt", "one\ntwo\n", WAIT, &[&ed]).await;
}

/// Helix with no root marker sends `rootUri: null`: files are named relative to the directory
/// the bridge was started in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_without_root_names_files_relative_to_the_working_directory() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("a.txt", "one\n")]).await;
    let ed = FakeEditor::builder(Kind::Helix)
        .no_root()
        .invite(&server.ws_url(&room))
        .start()
        .await;
    ed.wait_connected(WAIT).await;
    ed.open("notes/todo.txt", "- write tests\n");
    wait_server_file(
        &server,
        &room,
        "notes/todo.txt",
        "- write tests\n",
        WAIT,
        &[&ed],
    )
    .await;
}

/// `duet.status` returns and shows `{state, room, server, peers, files}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_reports_room_server_peers_and_files() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let ann = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, "main.py").await;
    let _bob = FakeEditor::joined(Kind::Helix, "bob", &server, &room, "main.py").await;
    // Bob's presence takes a moment to reach ann.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark = ann.mark();
    let status = ann
        .execute_command("duet.status", json!([]))
        .await
        .unwrap_or_else(|e| panic!("duet.status failed: {e}\n{}", ann.report()));
    assert_eq!(status["state"], "connected", "{status}");
    assert!(
        status["room"]
            .as_str()
            .is_some_and(|r| r.contains(&room.id)),
        "{status}"
    );
    assert!(
        status["server"]
            .as_str()
            .is_some_and(|s| s.contains(&server.port.to_string())),
        "{status}"
    );
    let peers = status["peers"]
        .as_u64()
        .or_else(|| status["peers"].as_array().map(|a| a.len() as u64));
    assert!(peers.is_some_and(|n| n >= 1), "bob is there: {status}");
    let files = status["files"].to_string();
    assert!(files.contains("main.py"), "{status}");
    ann.wait_received_after(mark, "duet.status shown", WAIT, |m, _| {
        m == "window/showMessage" || m == "window/showMessageRequest"
    })
    .await;
}

/// Four people join one after another; each one's status ends `connected` and stays so (no
/// stale `connecting` arriving after `connected`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_stays_connected_after_joining() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let mut editors = Vec::new();
    for round in 0..3 {
        for kind in Kind::ALL {
            let label = format!("{}{round}", kind.name());
            editors.push(FakeEditor::joined(kind, &label, &server, &room, "main.py").await);
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    for ed in &editors {
        let states: Vec<String> = ed
            .received()
            .iter()
            .filter(|r| r.method == "duet/status")
            .filter_map(|r| r.params["state"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            ed.status().as_deref(),
            Some("connected"),
            "{}: statuses in order: {states:?}\n{}",
            ed.label,
            ed.report()
        );
    }
}

/// `duet.createRoom` makes a room holding the open files, joins it, shows and returns the invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_room_command_creates_a_room_with_the_open_files() {
    let (_db, server) = start().await;
    let ed = FakeEditor::builder(Kind::VsCode).start().await;
    ed.open("main.py", "print('hi 🎉')\n");
    let result = ed
        .execute_command("duet.createRoom", json!([server.url("")]))
        .await
        .unwrap_or_else(|e| panic!("duet.createRoom failed: {e}\n{}", ed.report()));
    let invite = result
        .as_str()
        .or_else(|| result["invite"].as_str())
        .unwrap_or_else(|| panic!("no invite returned: {result}"))
        .to_string();
    let shown = ed
        .wait_message("the invite shown", WAIT, |m| text_of(m).contains(&invite))
        .await;
    assert_ne!(shown["type"], 1, "the invite is not an error: {shown}");
    ed.wait_connected(WAIT).await;
    let room = parse_invite(&invite);
    wait_server_file(&server, &room, "main.py", "print('hi 🎉')\n", WAIT, &[&ed]).await;
    ed.insert("main.py", 0, "# new room\n");
    converge(&server, &room, "main.py", &[&ed], WAIT).await;
    // The invite went to the user, never its token to the log.
    let token = invite.rsplit("token=").next().unwrap();
    let log = ed.log();
    assert!(log.contains("message to the user"), "{log}");
    assert!(!log.contains(token), "the bridge logged the token:\n{log}");
}

/// `duet.createRoom` without an argument creates the room on the server of the configured
/// invite (it used to try 127.0.0.1:8000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_room_without_a_server_uses_the_invites() {
    let (_db, server) = start().await;
    let first = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let ed = FakeEditor::builder(Kind::Helix)
        .file(
            ".duet.toml",
            &format!("invite = \"{}\"\n", server.ws_url(&first)),
        )
        .start()
        .await;
    ed.wait_connected(WAIT).await;
    ed.open("new.py", "y = 2\n");
    let result = ed
        .execute_command("duet.createRoom", json!([]))
        .await
        .unwrap_or_else(|e| panic!("duet.createRoom failed: {e}\n{}", ed.report()));
    let room = parse_invite(result["invite"].as_str().expect("invite"));
    assert_ne!(room.id, first.id);
    wait_server_file(&server, &room, "new.py", "y = 2\n", WAIT, &[&ed]).await;
}

/// Run by hand in a terminal, `duet-lsp --version` and `--help` answer at once (they used to
/// wait for LSP on stdin); an unknown argument is an error with the usage.
#[test]
fn duet_lsp_answers_version_and_help_in_a_terminal() {
    let run = |arg: &str| {
        std::process::Command::new(duet_e2e::binary("duet-lsp"))
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .output()
            .expect("duet-lsp runs")
    };
    let version = run("--version");
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("duet-lsp "));
    let help = run("--help");
    assert!(String::from_utf8_lossy(&help.stdout).contains("usage: duet-lsp"));
    let wrong = run("--nonsense");
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unknown argument"));
}

/// `duet.leaveRoom`: edits stay local afterwards and the status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_room_command_stops_syncing() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let ed = FakeEditor::joined(Kind::Neovim, "nv", &server, &room, "main.py").await;
    ed.execute_command("duet.leaveRoom", json!([]))
        .await
        .unwrap_or_else(|e| panic!("duet.leaveRoom failed: {e}\n{}", ed.report()));
    ed.wait_status(&["idle", "offline"], WAIT).await;
    ed.insert("main.py", 0, "local = True\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.file(&room, "main.py").await.as_deref(),
        Some("x = 1\n")
    );
    let status = ed.execute_command("duet.status", json!([])).await;
    assert!(
        status.as_ref().is_ok_and(|s| s["state"] != "connected"),
        "{status:?}"
    );
}

/// Each editor hears about the other through `duet/peers`, with the name it configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_notification_names_the_other_editor() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let ann = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, "main.py").await;
    let bob = FakeEditor::joined(Kind::Helix, "bob", &server, &room, "main.py").await;
    let named = |name: &'static str| {
        move |m: &str, p: &Value| {
            m == "duet/peers"
                && p["peers"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|peer| peer["name"] == name))
        }
    };
    ann.wait_received_after(0, "duet/peers naming bob", WAIT, named("bob"))
        .await;
    bob.wait_received_after(0, "duet/peers naming ann", WAIT, named("ann"))
        .await;
}

/// A person's mistake is told in words, and the bridge keeps working.
async fn assert_clear_error_and_alive(ed: &FakeEditor, what: &str, words: &[&str]) {
    let message = ed
        .wait_message(what, WAIT, |m| {
            let text = text_of(m).to_lowercase();
            is_problem(m) && words.iter().any(|w| text.contains(w))
        })
        .await;
    assert!(!text_of(&message).trim().is_empty());
    assert!(ed.alive(), "the bridge crashed\n{}", ed.report());
    // Still answering, and not claiming to be connected.
    ed.open("main.py", "x = 1\n");
    ed.insert("main.py", 0, "# still typing\n");
    let status = ed.execute_command("duet.status", json!([])).await;
    if let Ok(status) = &status {
        assert_ne!(status["state"], "connected", "{status}");
    }
    assert_ne!(ed.status().as_deref(), Some("connected"));
    ed.completion("main.py", 0).await;
    let shutdown = ed.shutdown().await;
    assert!(shutdown.answered, "shutdown answered\n{}", ed.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invite_gives_a_clear_error_and_no_crash() {
    let (_db, _server) = start().await;
    let ed = FakeEditor::builder(Kind::Helix).start().await;
    let result = ed
        .execute_command("duet.joinRoom", json!(["this is not an invite"]))
        .await;
    let _ = result; // Helix throws the result away: the message is what the person sees.
    assert_clear_error_and_alive(&ed, "an error about the invite", &["invite"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_room_gives_a_clear_error_and_no_crash() {
    let (_db, server) = start().await;
    let invite = format!(
        "{}/{}?token=whatever",
        server.ws_base(),
        uuid::Uuid::new_v4()
    );
    let ed = FakeEditor::start(Kind::VsCode, &invite).await;
    assert_clear_error_and_alive(&ed, "an error saying the room does not exist", &["room"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_gives_a_clear_error_and_no_crash() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let invite = format!("{}/{}?token=wrong-token", server.ws_base(), room.id);
    let ed = FakeEditor::builder(Kind::Neovim)
        .init_options(json!({"invite": invite}))
        .start()
        .await;
    assert_clear_error_and_alive(&ed, "an error about the token", &["token"]).await;
    // Nothing leaked into the room.
    assert_eq!(
        server.file(&room, "main.py").await.as_deref(),
        Some("x = 1\n")
    );
}

/// A failed join while in a room keeps the room: the person is told, stays connected, and
/// typing still syncs. A join that works moves the open files to the new room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_join_keeps_the_room_you_are_in() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    let ed = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, "main.py").await;
    let short = &room.id[..8];
    for (invite, words) in [
        (
            format!("{}/{}?token=wrong-token", server.ws_base(), room.id),
            "token",
        ),
        (
            format!("{}/{}?token=x", server.ws_base(), uuid::Uuid::new_v4()),
            "room",
        ),
        // Nothing listens there: refused at once.
        (
            "ws://127.0.0.1:9/ws/00000000-0000-0000-0000-000000000000?token=x".into(),
            "reach",
        ),
    ] {
        let mark = ed.mark();
        let _ = ed.execute_command("duet.joinRoom", json!([invite])).await;
        let message = ed
            .wait_received_after(mark, "the join's failure", WAIT, |m, p| {
                m == "window/showMessage" && text_of(p).contains("still in room")
            })
            .await;
        let text = text_of(&message.params);
        assert!(text.contains(words) && text.contains(short), "{text}");
        assert_eq!(ed.status().as_deref(), Some("connected"));
        let status = ed.execute_command("duet.status", json!([])).await.unwrap();
        assert_eq!(status["room"], room.id, "{status}");
    }
    ed.type_text("main.py", 0, "# still here\n").await;
    wait_server_file(
        &server,
        &room,
        "main.py",
        "# still here\nx = 1\n",
        WAIT,
        &[&ed],
    )
    .await;

    let other = server.create_room_with(&[("main.py", "other\n")]).await;
    ed.execute_command("duet.joinRoom", json!([server.ws_url(&other)]))
        .await
        .unwrap();
    ed.wait_text("main.py", "other\n", WAIT).await;
    ed.type_text("main.py", 0, "moved ").await;
    wait_server_file(&server, &other, "main.py", "moved other\n", WAIT, &[&ed]).await;
    assert_eq!(
        server.file(&room, "main.py").await.as_deref(),
        Some("# still here\nx = 1\n"),
        "the room left behind is not touched"
    );
}

/// The editor sends a `didChange` that is not valid UTF-8 (Neovim, its cursor inside a
/// character): that file stops being shared and the person is told which and why; the other
/// file keeps syncing both ways, and the bridge keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_from_the_editor_unshares_that_file_only() {
    let (_db, server) = start().await;
    let room = server
        .create_room_with(&[("a.txt", "é\n"), ("b.txt", "b\n")])
        .await;
    let ed = FakeEditor::joined(Kind::Neovim, "ann", &server, &room, "a.txt").await;
    ed.open("b.txt", "b\n");
    let peer = YClient::join(&server.ws_url(&room)).await;
    ed.insert_invalid_utf8("a.txt", 1);
    let message = ed
        .wait_message("which file stopped being shared", WAIT, |m| {
            is_problem(m) && text_of(m).contains("a.txt")
        })
        .await;
    assert!(text_of(&message).contains("UTF-8"), "{message}");
    ed.insert("a.txt", 0, "unshared ");
    ed.type_text("b.txt", 0, "still ").await;
    wait_server_file(&server, &room, "b.txt", "still b\n", WAIT, &[&ed]).await;
    peer.insert("b.txt", 0, "peer ");
    ed.wait_text("b.txt", "peer still b\n", WAIT).await;
    assert_eq!(server.file(&room, "a.txt").await.as_deref(), Some("é\n"));
    // Still answering requests, about that file too.
    ed.completion("a.txt", 0).await;
    assert!(ed.alive(), "{}", ed.report());
}

fn labels(completion: &Value) -> Vec<String> {
    let items = completion
        .as_array()
        .or_else(|| completion["items"].as_array())
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .filter_map(|i| i["label"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_offers_import_os_for_imp_in_python() {
    let (_db, server) = start().await;
    let room = server.create_room_with(&[("main.py", "x = 1\n")]).await;
    for kind in Kind::ALL {
        let ed = FakeEditor::joined(kind, kind.name(), &server, &room, "main.py").await;
        let text = ed.text("main.py");
        ed.insert("main.py", 0, "imp");
        let offered = labels(&ed.completion("main.py", 3).await);
        assert!(
            offered.iter().any(|l| l == "import os"),
            "{kind:?}: `imp` → `import os` expected among {offered:?}"
        );
        ed.delete("main.py", 0, 3);
        assert_eq!(ed.text("main.py"), text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_offers_identifiers_from_other_files_of_the_room() {
    let (_db, server) = start().await;
    let room = server
        .create_room_with(&[
            ("main.py", "x = 1\n"),
            ("util.py", "def compute_checksum(data):\n    return 0\n"),
        ])
        .await;
    let ed = FakeEditor::joined(Kind::Helix, "hx", &server, &room, "main.py").await;
    ed.type_text("main.py", 6, "compute_").await;
    let offered = labels(&ed.completion("main.py", 14).await);
    assert!(
        offered.iter().any(|l| l == "compute_checksum"),
        "an identifier of util.py (not open here) expected among {offered:?}"
    );
    // Also one a peer just added to yet another file.
    let peer = YClient::join(&server.ws_url(&room)).await;
    peer.append("lib.py", "def compute_fresh_total():\n    pass\n");
    duet_e2e::eventually(WAIT, "the peer's new identifier to be offered", || async {
        labels(&ed.completion("main.py", 14).await)
            .iter()
            .any(|l| l == "compute_fresh_total")
            .then_some(())
    })
    .await;
}
