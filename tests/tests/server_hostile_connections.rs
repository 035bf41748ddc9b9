//! Connections and requests that break a limit get a clear answer: every REST error is JSON,
//! the body limits let `POST /rooms` reach the file and room limits, and a WebSocket peer
//! learns why it was closed (a close code and reason, not a dropped connection).

use std::time::Duration;

use duet_e2e::node::NodeClient;
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text:?}"));
    (status, body)
}

/// Before, bodies over 2 MiB got a plain-text 413 (so `POST /rooms` could not reach the 4 MiB
/// file limit), and several 400s and the 405 were plain text. Now every error is JSON and the
/// body limit follows the room limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_error_is_json_and_bodies_reach_the_limits() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let http = &server.http;
    let at_limit = "f".repeat(4 << 20);
    let (status, body) = answer(
        http.post(server.url("/rooms"))
            .json(&json!({"files": {"big.txt": at_limit, "b.txt": "x".repeat(3 << 20)}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 201,
        "a 4 MiB file and 7 MiB in all are within the limits: {body}"
    );
    let (status, body) = answer(
        http.post(server.url("/rooms"))
            .json(&json!({"files": {"big.txt": "f".repeat((4 << 20) + 1)}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        body["error"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
    let (status, body) = answer(
        http.post(server.url("/rooms"))
            .header("content-type", "application/json")
            .body(vec![b' '; 66 << 20 | 1 << 20])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string(), "{body}");

    let room = server.create_room(json!({})).await;
    let requests = [
        (
            http.get(server.url(&format!("/ws/{}?token={}", room.id, room.token))),
            400,
        ),
        (http.put(server.url("/rooms")), 405),
        (
            http.get(server.url(&format!("/rooms/{}/files/%FF", room.id)))
                .bearer_auth(&room.token),
            400,
        ),
        (http.post(server.url("/autocomplete")).body("{"), 400),
        (http.get(server.url("/nowhere")), 404),
    ];
    for (request, expected) in requests {
        let (status, body) = answer(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{body}");
        assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");
    }
}

/// A frame far over the message limit, from the stock client: before, it saw the connection
/// drop (1006, no reason) — the server closed with the rest of the frame unread, which reset
/// the connection before the client read the close frame. Now it gets 1009 and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_far_over_the_limit_is_closed_with_a_reason() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("a.txt", "keep me")]).await;
    let witness = YClient::join(&server.ws_url(&room)).await;
    for bytes in [9_000_000, 5_000_000] {
        let mut stock = NodeClient::spawn();
        stock.connect(&server.ws_base(), &room).await;
        let closed = stock.ok(json!({"cmd": "sendRaw", "bytes": bytes})).await;
        assert_eq!(closed["closeCode"], 1009, "{bytes} bytes: {closed}");
        let reason = closed["closeReason"].as_str().unwrap();
        assert!(reason.contains("too large"), "{reason}");
    }
    assert_eq!(witness.closed(), None);
    assert_eq!(
        server.file(&room, "a.txt").await.as_deref(),
        Some("keep me")
    );
}

/// A peer that reads, but too slowly to keep up, is disconnected: before, its close frame
/// got one second to pass the data queued ahead of it, and a peer that paused longer saw the
/// connection drop (1006). Now the close frame gets as long as any frame, and the peer learns
/// why (1013) once it has read what came before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_learns_why_it_was_disconnected() {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio_tungstenite::tungstenite::protocol::Message as WsMessage;

    let db = Database::new(Backend::Sqlite);
    let args = [
        "--send-queue",
        "8",
        "--max-messages-per-second",
        "1000",
        "--max-file-bytes",
        "100000000",
        "--max-room-bytes",
        "100000000",
    ];
    let server = Server::start(&db, &args).await;
    let room = server.create_room(json!({})).await;
    let (socket, _) = tokio_tungstenite::connect_async(server.ws_url(&room))
        .await
        .expect("connect");
    let (_sink, mut stream) = socket.split();
    let kicked = std::sync::Arc::new(AtomicBool::new(false));
    let paused = kicked.clone();
    let reader = tokio::spawn(async move {
        loop {
            if paused.swap(false, Ordering::Relaxed) {
                // Busy elsewhere for a few seconds, as a loaded laptop is.
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            match stream.next().await {
                Some(Ok(WsMessage::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    });
    let writer = YClient::join(&server.ws_url(&room)).await;
    let chunk = "s".repeat(64 * 1024);
    while server.room_info(&room).await["peer_count"] == 2 {
        for _ in 0..10 {
            writer.append("big.txt", &chunk);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    kicked.store(true, Ordering::Relaxed);
    let close = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
        .await
        .expect("the slow reader gets to the end")
        .expect("reader");
    let (code, reason) = close.expect("a close frame, not a dropped connection");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("too slow"), "{reason}");
    assert_eq!(writer.closed(), None);
}

/// Reads from a raw connection until the server closes it; returns what it sent and when.
async fn read_until_closed(socket: &mut tokio::net::TcpStream) -> (String, std::time::Instant) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    std::time::Instant::now(),
                )
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Before, silent connections and slowloris ones (headers a byte at a time) stayed open for
/// ever: 1,100 of them used up the descriptors and `/healthz` stopped answering. Now headers
/// must be complete within `--header-timeout-secs`, and a connection over `--max-connections`
/// is answered 503 (JSON) and closed, while the peers already in keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickling_connections_are_let_go_and_the_cap_refuses_cleanly() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let db = Database::new(Backend::Sqlite);
    let args = ["--header-timeout-secs", "2", "--max-connections", "12"];
    let server = Server::start(&db, &args).await;
    let room = server.create_room_with(&[("a.txt", "")]).await;
    let (ann, bob) = (
        YClient::join(&server.ws_url(&room)).await,
        YClient::join(&server.ws_url(&room)).await,
    );
    let address = format!("127.0.0.1:{}", server.port);

    // A trickler: a byte every 300 ms, never a blank line. And silent connections.
    let start = std::time::Instant::now();
    let mut trickler = TcpStream::connect(&address).await.unwrap();
    let trickle = tokio::spawn(async move {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for byte in request.iter().chain(b"a".repeat(200).iter()) {
            if trickler.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        read_until_closed(&mut trickler).await
    });
    let mut silent = Vec::new();
    for _ in 0..9 {
        silent.push(TcpStream::connect(&address).await.unwrap());
    }
    // Two peers, a trickler and nine silent connections fill the twelve places.
    let mut over = TcpStream::connect(&address).await.unwrap();
    let (answer, _) = read_until_closed(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("retry-after: 5") && answer.contains("\"error\""),
        "{answer}"
    );
    assert!(answer.contains("connection limit"), "{answer}");
    // The peers inside keep working all the while.
    ann.append("a.txt", "still here\n");
    bob.wait_text("a.txt", "still here\n", 5 * SECOND).await;

    for mut socket in silent {
        let (_, at) = read_until_closed(&mut socket).await;
        let after = at.duration_since(start);
        assert!(after < 10 * SECOND, "a silent connection held {after:?}");
    }
    let (_, at) = trickle.await.unwrap();
    let after = at.duration_since(start);
    assert!(
        (SECOND..10 * SECOND).contains(&after),
        "the trickler was let go after {after:?} (headers due within 2 s)"
    );
    // Places are free again.
    let response = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!((ann.closed(), bob.closed()), (None, None));
}
