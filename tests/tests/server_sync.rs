//! Live sync through a real `duet-server`: the stock Yjs provider (`y-websocket`, in Node)
//! and our Rust client, concurrent typing, presence — on both stores.

use std::time::Duration;

use duet_e2e::node::NodeClient;
use duet_e2e::on_both_backends;
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::yclient::YClient;
use serde_json::json;

on_both_backends! {
    reference_clients_typing_concurrently_converge => reference_clients_typing_concurrently_converge;
    presence_shows_who_is_here_and_who_left => presence_shows_who_is_here_and_who_left;
}

async fn reference_clients_typing_concurrently_converge(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("main.py", "# shared\n")]).await;
    let (mut ann, mut bob) = (NodeClient::spawn(), NodeClient::spawn());
    ann.connect(&server.ws_base(), &room).await;
    bob.connect(&server.ws_base(), &room).await;
    assert_eq!(bob.text("main.py").await, "# shared\n");

    // Both type at once, one code point per update, each at a cursor that moves with the other's
    // edits: ann at the start of the file, bob at its end.
    let pieces = ["héllo 🎉 世界\nnext line\n", "こんにちは 👩‍💻 wörld\r\n"];
    let typing_a = ann
        .call(json!({"cmd": "type", "file": "main.py", "text": pieces[0], "delayMs": 3, "at": 0}));
    let typing_b = bob.call(
        json!({"cmd": "type", "file": "main.py", "text": pieces[1], "delayMs": 3, "at": "end"}),
    );
    let (a, b) = tokio::join!(typing_a, typing_b);
    assert_eq!(
        (a["ok"].clone(), b["ok"].clone()),
        (json!(true), json!(true))
    );

    let expected_len = "# shared\n".len() + pieces[0].len() + pieces[1].len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (a, b) = (ann.text("main.py").await, bob.text("main.py").await);
        if a == b && a.len() == expected_len {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas differ: {a:?} / {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Every typed character is there, in each author's order, around the original line.
    assert_eq!(text, format!("{}# shared\n{}", pieces[0], pieces[1]));
    // The server's copy is the same text, and so is a client that joins afterwards.
    assert_eq!(
        server.file(&room, "main.py").await.as_deref(),
        Some(text.as_str())
    );
    let late = YClient::join(&server.ws_url(&room)).await;
    assert_eq!(late.text("main.py").as_deref(), Some(text.as_str()));

    // A Rust yrs client and the JS provider agree on UTF-16 offsets: insert after the emoji.
    let offset = text.encode_utf16().count() as u32;
    late.insert("main.py", offset, "🦀");
    ann.ok(json!({"cmd": "waitText", "file": "main.py", "text": format!("{text}🦀"), "timeoutMs": 5000})).await;
}

async fn presence_shows_who_is_here_and_who_left(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("a.txt", "abc\n")]).await;
    let mut ann = NodeClient::spawn();
    ann.connect(&server.ws_base(), &room).await;
    let ann_state = json!({"user": {"name": "ann", "color": "#e06c75"}, "cursor": {"file": "a.txt", "anchor": 1, "head": 3}});
    ann.ok(json!({"cmd": "awareness", "state": ann_state}))
        .await;

    // A Rust peer sees ann; ann sees it once it announces itself.
    let bob = YClient::join(&server.ws_url(&room)).await;
    duet_e2e::eventually(Duration::from_secs(5), "bob to see ann", || async {
        bob.peers().contains(&ann_state).then_some(())
    })
    .await;
    bob.set_presence(json!({"user": {"name": "bob", "color": "#61afef"}}));
    let reply = ann
        .ok(json!({"cmd": "waitPeers", "count": 1, "timeoutMs": 5000}))
        .await;
    assert_eq!(reply["peers"][0]["state"]["user"]["name"], "bob");

    // The REST API shows both, with their presence.
    let info = server.room_info(&room).await;
    assert_eq!(info["peer_count"], 2, "{info}");
    let names: Vec<&str> = info["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["state"]["user"]["name"].as_str())
        .collect();
    assert!(names.contains(&"ann") && names.contains(&"bob"), "{info}");

    // Bob leaves without saying goodbye: everyone sees him go.
    drop(bob);
    ann.ok(json!({"cmd": "waitPeers", "count": 0, "timeoutMs": 5000}))
        .await;
    duet_e2e::eventually(
        Duration::from_secs(5),
        "the room to show one peer",
        || async {
            let info = server.room_info(&room).await;
            (info["peer_count"] == 1 && info["peers"].as_array().unwrap().len() == 1).then_some(())
        },
    )
    .await;
}
