//! The bridge over TLS to a `duet-server` serving HTTPS and WSS itself, with a certificate
//! authority and certificates made in the test: rooms created over `https://` and joined over
//! `wss://` from each way of naming the CA (`DUET_CA_FILE`, `ca` in `.duet.toml`, `ca` in
//! `initializationOptions`), typing that converges, a server restart the bridges come back
//! from, a real Neovim; and each certificate problem (unknown CA, wrong host name, expired,
//! a plain server behind a `wss://` invite) ending in its own clear message, with every
//! bridge still running. The certificate is renewed on disk and reloaded with SIGHUP while a
//! bridge stays connected.

use duet_e2e::editor::{converge, FakeEditor, Kind, WAIT};
use duet_e2e::nvim::{workspace_with, Nvims};
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::tls::{Issued, TestCa, Validity};
use serde_json::{json, Value};

/// A TLS server whose certificate names 127.0.0.1, issued by a fresh CA.
async fn tls_server(db: &Database) -> (TestCa, Issued, Server) {
    let ca = TestCa::new("tls");
    let issued = ca.issue("server", &["127.0.0.1"], Validity::Current);
    let server = Server::start_tls(db, &[], &ca, &issued).await;
    (ca, issued, server)
}

fn invite(base: &str, room: &RoomRef) -> String {
    format!("{base}/{}?token={}", room.id, room.token)
}

fn ca_path(ca: &TestCa) -> String {
    ca.ca_file.display().to_string()
}

/// Waits for a `window/showMessage` containing every one of `pieces`; returns its text.
async fn message_with(editor: &FakeEditor, pieces: &[&str]) -> String {
    let shown = editor
        .wait_message(&format!("a message with {pieces:?}"), WAIT, |m| {
            let text = m["message"].as_str().unwrap_or_default();
            pieces.iter().all(|p| text.contains(p))
        })
        .await;
    shown["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_create_a_room_over_https_and_pair_over_wss_across_a_restart() {
    let db = Database::new(Backend::Sqlite);
    let (ca, _issued, mut server) = tls_server(&db).await;

    // A creates the room over https://, with the CA from DUET_CA_FILE.
    let a = FakeEditor::builder(Kind::VsCode)
        .label("ann")
        .env("DUET_CA_FILE", &ca_path(&ca))
        .start()
        .await;
    a.open("main.py", "print('over TLS')\n");
    let created = a
        .execute_command("duet.createRoom", json!([server.url("")]))
        .await
        .unwrap_or_else(|e| panic!("duet.createRoom over https failed: {e}\n{}", a.report()));
    let shared = created["invite"].as_str().expect("an invite").to_string();
    assert!(
        shared.starts_with(&format!("{}/", server.ws_base())) && shared.starts_with("wss://"),
        "the invite is a wss:// one: {shared}"
    );
    a.wait_connected(WAIT).await;
    let (id, token) = shared
        .split_once("/ws/")
        .and_then(|(_, rest)| rest.split_once("?token="))
        .expect("invite shape");
    let room = RoomRef {
        id: id.to_string(),
        token: token.to_string(),
    };

    // B names the CA in .duet.toml, relative to that file; C in initializationOptions.
    let b = FakeEditor::builder(Kind::Helix)
        .label("bob")
        .file(
            "certs/ca.pem",
            &std::fs::read_to_string(&ca.ca_file).unwrap(),
        )
        .file(
            ".duet.toml",
            &format!("invite = \"{shared}\"\nca = \"certs/ca.pem\"\n"),
        )
        .start()
        .await;
    let c = FakeEditor::builder(Kind::Neovim)
        .label("cy")
        .init_options(json!({"invite": shared, "ca": ca_path(&ca)}))
        .start()
        .await;
    for editor in [&b, &c] {
        editor.wait_connected(WAIT).await;
        editor.open("main.py", &server.file(&room, "main.py").await.unwrap());
    }
    let editors = [&a, &b, &c];
    // One after the other: three people typing at the same place at once interleave.
    for (editor, line) in [(&a, "# ann\n"), (&b, "# bob\n"), (&c, "# cy\n")] {
        editor.type_text("main.py", 0, line).await;
        converge(&server, &room, "main.py", &editors, WAIT).await;
    }
    let text = converge(&server, &room, "main.py", &editors, WAIT).await;
    for line in ["# ann", "# bob", "# cy", "print('over TLS')"] {
        assert!(text.contains(line), "{line:?} missing from {text:?}");
    }

    // A restart: every bridge reconnects over wss:// and what is typed meanwhile syncs.
    assert!(server.terminate().await, "the server stops cleanly");
    for editor in editors {
        editor.wait_status(&["offline"], WAIT).await;
    }
    b.type_text("main.py", 0, "# bob, offline\n").await;
    server.restart().await;
    for editor in editors {
        editor.wait_connected(WAIT).await;
    }
    a.type_text("main.py", 0, "# ann, after the restart\n")
        .await;
    let text = converge(&server, &room, "main.py", &editors, WAIT).await;
    assert!(
        text.contains("# bob, offline") && text.contains("# ann, after the restart"),
        "{text:?}"
    );
    assert!(
        !server.log().contains(&room.token),
        "a token reached the server's log"
    );
    for editor in editors {
        editor.assert_no_violations();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_problems_are_explained_and_nothing_crashes() {
    let db = Database::new(Backend::Sqlite);
    let (ca, issued, server) = tls_server(&db).await;
    let room = server.create_room_with(&[("a.txt", "a\n")]).await;
    let good = invite(&server.ws_base(), &room);
    let other_ca = TestCa::new("other");

    // A CA this machine does not trust (neither the system's roots nor the file named).
    let unknown = FakeEditor::builder(Kind::VsCode)
        .label("unknown-ca")
        .env("DUET_CA_FILE", &ca_path(&other_ca))
        .invite(&good)
        .start()
        .await;
    let text = message_with(
        &unknown,
        &["not signed by a certificate authority", "DUET_CA_FILE"],
    )
    .await;
    assert!(text.contains("127.0.0.1"), "names the server: {text}");
    // createRoom over https:// says the same.
    let refused = unknown
        .execute_command("duet.createRoom", json!([server.url("")]))
        .await
        .expect_err("createRoom with an untrusted certificate fails");
    assert!(
        refused
            .to_string()
            .contains("not signed by a certificate authority"),
        "{refused}"
    );

    // The host name the invite uses is not the certificate's.
    let by_name = invite(&format!("wss://localhost:{}/ws", server.port), &room);
    let wrong_host = FakeEditor::builder(Kind::Neovim)
        .label("wrong-host")
        .env("DUET_CA_FILE", &ca_path(&ca))
        .invite(&by_name)
        .start()
        .await;
    message_with(&wrong_host, &["localhost", "for another host name"]).await;

    // A wss:// invite for a server that does not speak TLS.
    let plain_db = Database::new(Backend::Sqlite);
    let plain = Server::start(&plain_db, &[]).await;
    let plain_room = plain.create_room_with(&[("a.txt", "")]).await;
    let not_tls = FakeEditor::builder(Kind::Helix)
        .label("not-tls")
        .invite(&invite(
            &format!("wss://127.0.0.1:{}/ws", plain.port),
            &plain_room,
        ))
        .start()
        .await;
    message_with(&not_tls, &["does not speak TLS"]).await;

    // One bridge is connected while the certificate is renewed on disk and reloaded.
    let staying = FakeEditor::builder(Kind::VsCode)
        .label("staying")
        .env("DUET_CA_FILE", &ca_path(&ca))
        .join(&server, &room, "a.txt")
        .await;

    // Renewed with an expired certificate: new connections are refused for it...
    issued.replace_with(&ca.issue("expired", &["127.0.0.1"], Validity::Expired));
    reload(&server, 1).await;
    let expired = FakeEditor::builder(Kind::VsCode)
        .label("expired")
        .env("DUET_CA_FILE", &ca_path(&ca))
        .invite(&good)
        .start()
        .await;
    message_with(&expired, &["has expired", "renew"]).await;
    // ...while the connected bridge keeps its room: its typing reaches the server.
    staying.type_text("a.txt", 0, "still here ").await;
    converge(&server, &room, "a.txt", &[&staying], WAIT).await;

    // A file that is not a certificate is refused, and the certificate in use stays.
    std::fs::write(&issued.cert, "not a certificate").expect("break the certificate");
    server.hangup();
    wait_log(&server, "TLS certificate not reloaded", 1).await;

    // Renewed properly, now naming localhost too: the same invite by name joins.
    issued.replace_with(&ca.issue("renewed", &["127.0.0.1", "localhost"], Validity::Current));
    reload(&server, 2).await;
    let renewed = FakeEditor::builder(Kind::Neovim)
        .label("renewed")
        .env("DUET_CA_FILE", &ca_path(&ca))
        .invite(&by_name)
        .start()
        .await;
    renewed.wait_connected(WAIT).await;
    renewed.open("a.txt", &server.file(&room, "a.txt").await.unwrap());
    renewed.type_text("a.txt", 0, "renewed ").await;
    converge(&server, &room, "a.txt", &[&staying, &renewed], WAIT).await;
    let offline = staying
        .messages()
        .into_iter()
        .filter(|m| {
            m["message"]
                .as_str()
                .unwrap_or_default()
                .contains("offline")
        })
        .collect::<Vec<Value>>();
    assert!(
        offline.is_empty(),
        "reloads dropped a connection: {offline:?}"
    );

    for editor in [
        &unknown,
        &wrong_host,
        &not_tls,
        &staying,
        &expired,
        &renewed,
    ] {
        assert!(
            editor.alive(),
            "{}'s bridge exited\n{}",
            editor.label,
            editor.report()
        );
    }
}

/// Sends SIGHUP and waits for the `n`th successful reload in the server's log.
async fn reload(server: &Server, n: usize) {
    server.hangup();
    wait_log(server, "TLS certificate reloaded", n).await;
}

async fn wait_log(server: &Server, line: &str, n: usize) {
    duet_e2e::eventually(
        WAIT,
        &format!("{line:?} {n}× in the server's log"),
        || async { (server.log().matches(line).count() >= n).then_some(()) },
    )
    .await;
}

/// A real Neovim with the plugin, naming the CA in `setup()`, pairs over wss:// with a
/// scripted editor, and comes back after the server restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_neovim_pairs_over_wss_across_a_restart() {
    let db = Database::new(Backend::Sqlite);
    let (ca, _issued, mut server) = tls_server(&db).await;
    let initial = "one\n";
    let room = server.create_room_with(&[("notes.txt", initial)]).await;
    let shared = invite(&server.ws_base(), &room);
    let peer = FakeEditor::builder(Kind::VsCode)
        .label("peer")
        .env("DUET_CA_FILE", &ca_path(&ca))
        .join(&server, &room, "notes.txt")
        .await;

    let ws = workspace_with("nvim-tls", &[("notes.txt", initial)]);
    let mut nv = Nvims::spawn().await;
    nv.start(
        "A",
        &ws.0,
        &["notes.txt"],
        json!({"name": "ann", "invite": shared, "ca": ca_path(&ca)}),
    )
    .await;
    let short = &room.id[..8];
    nv.wait_statusline("A", &format!("duet: {short} · 1 peer"))
        .await;
    nv.input("A", "GoTLS from Neovim<Esc>").await;
    peer.wait_text("notes.txt", "one\nTLS from Neovim\n", WAIT)
        .await;
    peer.type_text("notes.txt", 0, "peer ").await;
    wait_lines(&mut nv, &["peer one", "TLS from Neovim"]).await;

    assert!(server.terminate().await, "the server stops cleanly");
    nv.wait_note("A", "offline", None).await;
    server.restart().await;
    nv.wait_note("A", "back online", None).await;
    nv.input("A", "Goafter the restart<Esc>").await;
    let text = "peer one\nTLS from Neovim\nafter the restart\n";
    peer.wait_text("notes.txt", text, WAIT).await;
    assert_eq!(server.file(&room, "notes.txt").await.as_deref(), Some(text));
    nv.quit().await;
}

async fn wait_lines(nv: &mut Nvims, lines: &[&str]) {
    nv.wait_for(
        "A",
        &format!("the buffer to read {lines:?}"),
        "return vim.api.nvim_buf_get_lines(0, 0, -1, true)",
        json!([]),
        WAIT,
        |v| v == &json!(lines),
    )
    .await;
}
