//! Every limit, garbage frames and slow consumers: the offending connection is closed with a
//! reason that names the limit, and nobody else notices.

use std::time::Duration;

use duet_e2e::on_both_backends;
use duet_e2e::proxy::Proxy;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::yclient::YClient;
use tokio_tungstenite::tungstenite::protocol::Message as WsMessage;

const SECOND: Duration = Duration::from_secs(1);

on_both_backends! {
    a_full_room_refuses_one_more_peer => a_full_room_refuses_one_more_peer;
    oversized_messages_close_only_their_sender => oversized_messages_close_only_their_sender;
    file_room_and_file_count_limits_hold => file_room_and_file_count_limits_hold;
    flooding_closes_only_the_flooder => flooding_closes_only_the_flooder;
    garbage_frames_close_only_their_sender => garbage_frames_close_only_their_sender;
    invalid_file_entries_are_removed => invalid_file_entries_are_removed;
    a_peer_that_stops_reading_is_disconnected => a_peer_that_stops_reading_is_disconnected;
}

/// A bystander that must not notice anything: it keeps editing and sees the expected text.
async fn bystander_is_undisturbed(server: &Server, room: &RoomRef, witness: &YClient) {
    assert_eq!(witness.closed(), None, "the bystander was disconnected");
    let writer = YClient::join(&server.ws_url(room)).await;
    writer.append("ok.txt", "still fine");
    witness.wait_text("ok.txt", "still fine", 5 * SECOND).await;
    assert_eq!(
        server.file(room, "ok.txt").await.as_deref(),
        Some("still fine")
    );
}

async fn a_full_room_refuses_one_more_peer(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &["--max-peers", "2"]).await;
    let room = server.create_room(serde_json::json!({})).await;
    let first = YClient::join(&server.ws_url(&room)).await;
    let second = YClient::join(&server.ws_url(&room)).await;
    let third = YClient::connect(&server.ws_url(&room)).await.unwrap();
    let (code, reason) = third.wait_closed(5 * SECOND).await;
    assert_eq!(code, 1013);
    assert!(reason.contains("room is full"), "{reason}");
    // The two inside carry on.
    first.append("a.txt", "hello");
    second.wait_text("a.txt", "hello", 5 * SECOND).await;
    assert_eq!(first.closed(), None);
}

async fn oversized_messages_close_only_their_sender(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &["--max-message-bytes", "1000"]).await;
    let room = server.create_room(serde_json::json!({})).await;
    let witness = YClient::join(&server.ws_url(&room)).await;
    for size in [1500, 100_000] {
        let big = YClient::join(&server.ws_url(&room)).await;
        big.append("big.txt", &"x".repeat(size));
        let (code, reason) = big.wait_closed(5 * SECOND).await;
        assert_eq!(code, 1009, "{size} bytes: {reason}");
        assert!(
            reason.contains("1000"),
            "the reason names the limit: {reason}"
        );
    }
    assert_eq!(
        witness.text("big.txt"),
        None,
        "nothing of the refused messages got through"
    );
    bystander_is_undisturbed(&server, &room, &witness).await;
}

async fn file_room_and_file_count_limits_hold(backend: Backend) {
    let db = Database::new(backend);
    let args = [
        "--max-file-bytes",
        "100",
        "--max-room-bytes",
        "150",
        "--max-files",
        "3",
    ];
    let server = Server::start(&db, &args).await;
    let room = server.create_room_with(&[("a.txt", "")]).await;
    let witness = YClient::join(&server.ws_url(&room)).await;

    // Typing a file up to its limit works; one keystroke past it is refused.
    let typist = YClient::join(&server.ws_url(&room)).await;
    for _ in 0..100 {
        typist.append("a.txt", "a");
    }
    witness
        .wait_text("a.txt", &"a".repeat(100), 5 * SECOND)
        .await;
    typist.append("a.txt", "a");
    let (code, reason) = typist.wait_closed(5 * SECOND).await;
    assert_eq!(
        (code, reason.contains("file too large")),
        (1009, true),
        "{reason}"
    );

    // The room as a whole: 100 + 60 > 150.
    let second = YClient::join(&server.ws_url(&room)).await;
    second.append("b.txt", &"b".repeat(60));
    let (code, reason) = second.wait_closed(5 * SECOND).await;
    assert_eq!(
        (code, reason.contains("room too large")),
        (1009, true),
        "{reason}"
    );

    // The number of files: a.txt plus two more is the limit.
    let third = YClient::join(&server.ws_url(&room)).await;
    third.append("c.txt", "c");
    third.append("d.txt", "d");
    witness.wait_text("d.txt", "d", 5 * SECOND).await;
    third.append("e.txt", "e");
    let (code, reason) = third.wait_closed(5 * SECOND).await;
    assert_eq!(
        (code, reason.contains("too many files")),
        (1009, true),
        "{reason}"
    );

    assert_eq!(server.file(&room, "a.txt").await.unwrap().len(), 100);
    assert_eq!(server.file(&room, "b.txt").await, None);
    assert_eq!(server.file(&room, "e.txt").await, None);
    assert_eq!(witness.closed(), None);
}

async fn flooding_closes_only_the_flooder(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &["--max-messages-per-second", "20"]).await;
    let room = server.create_room(serde_json::json!({})).await;
    let witness = YClient::join(&server.ws_url(&room)).await;
    let flooder = YClient::join(&server.ws_url(&room)).await;
    for _ in 0..200 {
        flooder.append("flood.txt", "x");
    }
    let (code, reason) = flooder.wait_closed(5 * SECOND).await;
    assert_eq!(code, 1008);
    assert!(
        reason.contains("rate limit") && reason.contains("20"),
        "{reason}"
    );
    // What was accepted before the limit is everyone's (the witness gets exactly the server's
    // copy); the rest never arrived.
    let accepted = duet_e2e::eventually(5 * SECOND, "the accepted burst to arrive", || async {
        let stored = server
            .file(&room, "flood.txt")
            .await
            .unwrap_or_default()
            .len();
        let seen = witness.text("flood.txt").unwrap_or_default().len();
        (seen >= 20 && seen == stored).then_some(seen)
    })
    .await;
    assert!(accepted < 200, "{accepted} of 200 messages accepted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        witness.text("flood.txt").unwrap().len(),
        accepted,
        "more arrived after the close"
    );
    bystander_is_undisturbed(&server, &room, &witness).await;
}

async fn garbage_frames_close_only_their_sender(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("a.txt", "keep me")]).await;
    let witness = YClient::join(&server.ws_url(&room)).await;
    let frames = [
        WsMessage::Binary(vec![0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3].into()),
        WsMessage::Binary(vec![0, 2, 200, 1, 1, 2].into()), // an update that claims more bytes than it has
        WsMessage::Binary(vec![0, 2, 5, 9, 9, 9, 9, 9].into()), // a sync update whose content is garbage
        WsMessage::Text("{\"hello\": 1}".into()),
    ];
    for frame in frames {
        let client = YClient::join(&server.ws_url(&room)).await;
        client.send_raw(frame.clone());
        let (code, reason) = client.wait_closed(5 * SECOND).await;
        assert_eq!(code, 1007, "{frame:?}: {reason}");
        assert!(!reason.is_empty());
    }
    assert_eq!(
        server.file(&room, "a.txt").await.as_deref(),
        Some("keep me")
    );
    bystander_is_undisturbed(&server, &room, &witness).await;
}

async fn invalid_file_entries_are_removed(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("a.txt", "keep me")]).await;
    let witness = YClient::join(&server.ws_url(&room)).await;
    let bad = YClient::join(&server.ws_url(&room)).await;
    bad.append("../escape.txt", "x");
    let (code, reason) = bad.wait_closed(5 * SECOND).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("../escape.txt"), "{reason}");
    duet_e2e::eventually(5 * SECOND, "the invalid entry to disappear", || async {
        witness.text("../escape.txt").is_none().then_some(())
    })
    .await;
    let files = server.room_info(&room).await["files"].clone();
    assert_eq!(files, serde_json::json!([{"path": "a.txt", "size": 7}]));
    bystander_is_undisturbed(&server, &room, &witness).await;
}

async fn a_peer_that_stops_reading_is_disconnected(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(
        &db,
        &[
            "--send-queue",
            "32",
            "--max-messages-per-second",
            "1000",
            "--max-file-bytes",
            "100000000",
            "--max-room-bytes",
            "100000000",
        ],
    )
    .await;
    let room = server.create_room(serde_json::json!({})).await;
    let witness = YClient::join(&server.ws_url(&room)).await;
    // A raw socket that joins and then never reads a byte.
    let (stalled, _) = tokio_tungstenite::connect_async(server.ws_url(&room))
        .await
        .unwrap();
    let writer = YClient::join(&server.ws_url(&room)).await;
    // A socket is counted once the server has taken it into the room, a little after the
    // handshake: wait for all three before watching the count fall.
    duet_e2e::eventually(10 * SECOND, "three peers in the room", || async {
        (server.room_info(&room).await["peer_count"] == 3).then_some(())
    })
    .await;
    let chunk = "y".repeat(64 * 1024);
    let mut sent = 0;
    // Enough to fill the stalled socket's kernel buffers and then its queue of 32.
    while server.room_info(&room).await["peer_count"] == 3 {
        assert!(sent < 400, "the stalled peer was never disconnected");
        for _ in 0..10 {
            writer.append("big.txt", &chunk);
        }
        sent += 10;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = chunk.repeat(sent);
    witness.wait_text("big.txt", &expected, 20 * SECOND).await;
    assert_eq!(writer.closed(), None);
    assert_eq!(witness.closed(), None);
    assert_eq!(server.metric("duet_peers_kicked_total").await, 1);
    drop(stalled);
}

/// A peer whose network goes silent — nothing arrives, nothing is closed — is let go after the
/// server's silence limit (30 s), and the others stop seeing it; a peer that is merely idle
/// (it answers the server's pings) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_let_go_and_leaves_presence() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room(serde_json::json!({})).await;
    let idle = YClient::join(&server.ws_url(&room)).await;
    let proxy = Proxy::start(server.port).await;
    let url = server
        .ws_url(&room)
        .replace(&format!(":{}/", server.port), &format!(":{}/", proxy.port));
    let silent = YClient::join(&url).await;
    silent.set_presence(serde_json::json!({"user": {"name": "silent"}}));
    let sees_silent = || idle.peers().iter().any(|p| p["user"]["name"] == "silent");
    duet_e2e::eventually(5 * SECOND, "the silent peer's presence", || async {
        sees_silent().then_some(())
    })
    .await;
    proxy.cut();
    let cut = tokio::time::Instant::now();
    duet_e2e::eventually(60 * SECOND, "the silent peer to be let go", || async {
        (!sees_silent() && server.room_info(&room).await["peer_count"] == 1).then_some(())
    })
    .await;
    let after = cut.elapsed();
    assert!(
        (25 * SECOND..45 * SECOND).contains(&after),
        "let go {after:?} after its network went silent (the limit is 30 s)"
    );
    bystander_is_undisturbed(&server, &room, &idle).await;
}
