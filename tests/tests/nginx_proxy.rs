//! duet-server behind a real nginx running `docs/nginx.conf` (Debian's package; `tests/run`
//! installs it), which terminates TLS with a certificate from a CA made in the test: a room
//! created over `https://` gets a `wss://` invite for the proxy's address; two stock Yjs
//! clients (`y-websocket`, joining with `?token=`) and the bridge (token in a header) sync
//! through it; the server's logs name the client from `X-Forwarded-For` only when nginx sent
//! it (a client's own header, to nginx or straight to the server, is not believed); and
//! nginx's access log holds the requests but never a token.

use std::net::IpAddr;

use duet_e2e::editor::{converge, FakeEditor, Kind, WAIT};
use duet_e2e::nginx::Nginx;
use duet_e2e::node::NodeClient;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::tls::{TestCa, Validity};
use serde_json::{json, Value};

/// Where the test's HTTP client connects from: a loopback address that is not nginx's.
const CLIENT: [u8; 4] = [127, 0, 0, 3];
/// What a client may claim to be; the server must never believe it.
const SPOOFED: &str = "203.0.113.9";

/// `POST /rooms` from `from` with a spoofed `X-Forwarded-For`; the room and the answer.
async fn create_room(http: &reqwest::Client, url: &str, files: Value) -> (RoomRef, Value) {
    let response = http
        .post(url)
        .header("x-forwarded-for", SPOOFED)
        .json(&json!({ "files": files }))
        .send()
        .await
        .expect("POST /rooms");
    assert_eq!(response.status(), 201, "POST /rooms");
    let body: Value = response.json().await.expect("json");
    let room = RoomRef {
        id: body["id"].as_str().expect("id").to_string(),
        token: body["token"].as_str().expect("token").to_string(),
    };
    (room, body)
}

fn client_from(ip: [u8; 4], ca: Option<&TestCa>) -> reqwest::Client {
    let builder = reqwest::Client::builder().local_address(IpAddr::from(ip));
    match ca {
        Some(ca) => builder.add_root_certificate(ca.root()),
        None => builder,
    }
    .build()
    .expect("HTTP client")
}

/// The server's log line that says `room` was created.
async fn created_line(server: &Server, room: &RoomRef) -> String {
    duet_e2e::eventually(WAIT, "the room's creation in the server's log", || async {
        server
            .log()
            .lines()
            .find(|l| l.contains("room created") && l.contains(&room.id))
            .map(str::to_string)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yjs_clients_and_the_bridge_sync_through_nginx_terminating_tls() {
    let ca = TestCa::new("nginx");
    let issued = ca.issue("nginx", &["localhost"], Validity::Current);
    let db = Database::new(Backend::Sqlite);
    // nginx reaches duet-server from 127.0.0.1 (its upstream in docs/nginx.conf).
    let server = Server::start(&db, &["--trusted-proxy", "127.0.0.1"]).await;
    let nginx = Nginx::start(&issued, server.port).await;

    // A room created through nginx: the invite is for the proxy, over wss://.
    let http = client_from(CLIENT, Some(&ca));
    let (room, body) =
        create_room(&http, &nginx.url("/rooms"), json!({"main.py": "x = 1\n"})).await;
    let invite = body["invite"].as_str().expect("invite").to_string();
    assert_eq!(
        invite,
        format!("{}/{}?token={}", nginx.ws_base(), room.id, room.token),
        "{}",
        nginx.errors()
    );
    // The server names the client nginx saw, not the proxy and not what the client claimed.
    let line = created_line(&server, &room).await;
    assert!(line.contains("client=127.0.0.3"), "{line}");

    // Straight to the server, the same claim is ignored: the peer is not a trusted proxy.
    let direct = client_from([127, 0, 0, 5], None);
    let (other, _) = create_room(&direct, &server.url("/rooms"), json!({})).await;
    let line = created_line(&server, &other).await;
    assert!(line.contains("client=127.0.0.5"), "{line}");
    assert!(
        !server.log().contains(SPOOFED),
        "a spoofed X-Forwarded-For was believed"
    );

    // Two stock Yjs clients through nginx, trusting the test CA.
    let trust = [("NODE_EXTRA_CA_CERTS", ca.ca_file.as_os_str())];
    let (mut ann, mut bob) = (
        NodeClient::spawn_with_env(&trust),
        NodeClient::spawn_with_env(&trust),
    );
    ann.connect(&nginx.ws_base(), &room).await;
    bob.connect(&nginx.ws_base(), &room).await;
    ann.ok(json!({"cmd": "type", "file": "main.py", "text": "# ann\n", "at": 0}))
        .await;
    bob.ok(json!({"cmd": "waitText", "file": "main.py", "text": "# ann\nx = 1\n"}))
        .await;

    // The bridge joins with the invite through nginx and types with them.
    let editor = FakeEditor::builder(Kind::VsCode)
        .env("DUET_CA_FILE", &ca.ca_file.display().to_string())
        .invite(&invite)
        .start()
        .await;
    editor.wait_connected(WAIT).await;
    editor.open("main.py", &server.file(&room, "main.py").await.unwrap());
    editor.type_text("main.py", 0, "# bridge\n").await;
    bob.ok(json!({"cmd": "type", "file": "main.py", "text": "# bob\n", "at": "end"}))
        .await;
    let text = converge(&server, &room, "main.py", &[&editor], WAIT).await;
    for line in ["# ann", "# bridge", "# bob", "x = 1"] {
        assert!(text.contains(line), "{line:?} missing from {text:?}");
    }
    for client in [&mut ann, &mut bob] {
        client
            .ok(json!({"cmd": "waitText", "file": "main.py", "text": text}))
            .await;
    }

    // nginx logs a WebSocket when it closes: close all three, then read its access log. It
    // holds every request, and no token (the Yjs clients sent theirs in the URL).
    for client in [&mut ann, &mut bob] {
        client.ok(json!({"cmd": "disconnect"})).await;
    }
    drop(editor);
    let ws_request = format!("\"GET /ws/{} ", room.id);
    let access = duet_e2e::eventually(WAIT, "three WebSockets in nginx's access log", || {
        let access = nginx.access_log();
        let upgrades = access
            .lines()
            .filter(|l| l.contains(&ws_request) && l.contains("\" 101 "))
            .count();
        async move { (upgrades == 3).then_some(access) }
    })
    .await;
    assert!(access.contains("\"POST /rooms "), "{access}");
    assert!(
        !access.contains(&room.token) && !access.contains("token="),
        "a token reached nginx's access log:\n{access}"
    );
}
