//! Several `duet-server` nodes sharing one PostgreSQL and relaying through one Redis (both real,
//! from Debian's packages), behind a real nginx balancing round-robin: stock Yjs clients and the
//! bridge on different nodes edit one document with presence, peer limits and deletion working
//! across nodes; each update row is written once, by the node its author is on; a node loading
//! a room another holds gets that node's unwritten updates; a relayed update lost on purpose is
//! repaired by the heartbeats; `kill -9` of a node, a Redis restart and a 10 s cut between one
//! node and Redis lose nothing, and `/readyz` says degraded while a node has no relay.

use std::process::Command;
use std::time::Duration;

use duet_e2e::editor::{converge, FakeEditor, Kind, WAIT};
use duet_e2e::nginx::Nginx;
use duet_e2e::node::NodeClient;
use duet_e2e::redis::{Redis, Tap};
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::tls::{TestCa, Validity};
use duet_e2e::yclient::YClient;
use duet_e2e::{binary, eventually};
use serde_json::{json, Value};

/// Bound on anything that crosses nodes: a heartbeat (1 s) repairs what the relay lost, a
/// silent node is noticed after 5 s, a reconnect to Redis backs off up to 2 s.
const ACROSS: Duration = Duration::from_secs(20);

/// Starts a node on the shared PostgreSQL that relays through `redis_url`.
async fn node(db: &Database, redis_url: &str, args: &[&str]) -> Server {
    Server::start(db, &[&["--redis-url", redis_url], args].concat()).await
}

/// Three nodes relaying through one Redis, with `args`, behind nginx; and nginx's CA.
struct Cluster {
    nodes: [Server; 3],
    nginx: Nginx,
    ca: TestCa,
    // Dropped last: the nodes first.
    db: Database,
    redis: Redis,
}

impl Cluster {
    async fn start(args: &[&str]) -> Cluster {
        let redis = Redis::start().await;
        let db = Database::new(Backend::Postgres);
        let args = [args, &["--trusted-proxy", "127.0.0.1"]].concat();
        let nodes = [
            node(&db, &redis.url(), &args).await,
            node(&db, &redis.url(), &args).await,
            node(&db, &redis.url(), &args).await,
        ];
        let ca = TestCa::new("scale-out");
        let issued = ca.issue("nginx", &["localhost"], Validity::Current);
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let nginx = Nginx::balance(&issued, &ports).await;
        Cluster {
            nodes,
            nginx,
            ca,
            db,
            redis,
        }
    }
}

/// `/readyz` of a node: its status code and body.
async fn readyz(server: &Server) -> (u16, Value) {
    let response = server
        .http
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz json"))
}

async fn wait_ready(server: &Server, ready: bool) {
    let what = if ready { "ready" } else { "degraded" };
    eventually(ACROSS, &format!("/readyz to say {what}"), || async {
        let (status, body) = readyz(server).await;
        (body["status"] == json!(what) && (status == 200) == ready).then_some(())
    })
    .await;
}

/// Every marker appears exactly once in `text`.
fn each_once(text: &str, markers: &[String]) {
    for marker in markers {
        assert_eq!(
            text.matches(marker.as_str()).count(),
            1,
            "{marker:?} should appear once in {text:?}"
        );
    }
}

/// Polls a client's text until it holds every marker; returns it.
async fn text_with(client: &mut NodeClient, file: &str, markers: &[String]) -> String {
    let deadline = tokio::time::Instant::now() + ACROSS;
    loop {
        let text = client.text(file).await;
        if markers.iter().all(|m| text.contains(m.as_str())) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {markers:?} in {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the client's provider is disconnected.
async fn disconnected(client: &mut NodeClient) {
    let deadline = tokio::time::Instant::now() + ACROSS;
    while client.call(json!({"cmd": "status"})).await["connected"] != json!(false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected after {ACROSS:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rows(db: &Database, room: &RoomRef) -> u64 {
    db.sql(&format!(
        "SELECT COUNT(*) FROM room_updates WHERE room_id = '{}'",
        room.id
    ))
    .trim()
    .parse()
    .expect("row count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_sqlite_is_refused_with_a_clear_message() {
    let db = Database::new(Backend::Sqlite);
    let output = Command::new(binary("duet-server"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run duet-server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--redis-url needs PostgreSQL"),
        "unclear refusal: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_nginx_share_edits_presence_limits_and_deletion() {
    let Cluster {
        nodes,
        nginx,
        ca,
        db: _db,
        redis: _redis,
    } = Cluster::start(&["--max-peers", "4"]).await;
    let room = nodes[0].create_room_with(&[("main.txt", "start\n")]).await;

    // Three stock Yjs clients, one straight to each node, and the bridge through nginx.
    let mut clients = Vec::new();
    for server in &nodes {
        let mut client = NodeClient::spawn();
        client.connect(&server.ws_base(), &room).await;
        clients.push(client);
    }
    let invite = format!("{}/{}?token={}", nginx.ws_base(), room.id, room.token);
    let editor = FakeEditor::builder(Kind::Neovim)
        .env("DUET_CA_FILE", &ca.ca_file.display().to_string())
        .invite(&invite)
        .start()
        .await;
    editor.wait_connected(WAIT).await;
    editor.open("main.txt", "start\n");

    // Everyone types at once; everyone ends with the same text, each line once.
    let mut markers = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let line = format!("node {i} was here\n");
        markers.push(line.trim().to_string());
        client
            .ok(json!({"cmd": "type", "file": "main.txt", "text": line, "at": 0}))
            .await;
    }
    editor.type_text("main.txt", 0, "the bridge too\n").await;
    markers.push("the bridge too".into());
    // Every line has crossed to the first node; then all agree with it.
    eventually(ACROSS, "every line on the first node", || async {
        let text = nodes[0].file(&room, "main.txt").await?;
        markers
            .iter()
            .all(|m| text.contains(m.as_str()))
            .then_some(())
    })
    .await;
    let text = converge(&nodes[0], &room, "main.txt", &[&editor], ACROSS).await;
    each_once(&text, &markers);
    for client in &mut clients {
        client
            .ok(json!({"cmd": "waitText", "file": "main.txt", "text": text, "timeoutMs": 20000}))
            .await;
    }
    for server in &nodes {
        assert_eq!(
            server.file(&room, "main.txt").await.as_deref(),
            Some(text.as_str())
        );
    }

    // Presence: each client sees the two others and the bridge, whichever node they are on.
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .ok(json!({"cmd": "awareness", "state": {"user": {"name": format!("user{i}")}}}))
            .await;
    }
    for client in &mut clients {
        let reply = client
            .ok(json!({"cmd": "waitPeers", "count": 3, "timeoutMs": 20000}))
            .await;
        let names: Vec<String> = reply["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["state"].to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    // The limit (4 peers) counts the peers of every node: a fifth is refused on any node.
    for server in &nodes {
        let fifth = YClient::connect(&server.ws_url(&room))
            .await
            .expect("upgrade");
        let (code, reason) = fifth.wait_closed(WAIT).await;
        assert_eq!(code, 1013, "{reason}");
        assert!(reason.contains("room is full"), "{reason}");
    }
    for server in &nodes {
        assert_eq!(server.room_info(&room).await["peer_count"], json!(4));
    }

    // Deleting the room on one node closes its peers on every node.
    let response = nodes[1]
        .http
        .delete(nodes[1].url(&format!("/rooms/{}", room.id)))
        .bearer_auth(&room.token)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 204);
    for client in &mut clients {
        disconnected(client).await;
    }
    for server in &nodes {
        eventually(ACROSS, "the room to leave every node", || async {
            (server.metric("duet_rooms_in_memory").await == 0).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_update_row_is_written_once_by_its_authors_node() {
    let redis = Redis::start().await;
    let db = Database::new(Backend::Postgres);
    let nodes = [
        node(&db, &redis.url(), &[]).await,
        node(&db, &redis.url(), &[]).await,
        node(&db, &redis.url(), &[]).await,
    ];
    let room = nodes[0].create_room_with(&[("a.txt", "")]).await;
    let readers: Vec<YClient> = {
        let mut readers = Vec::new();
        for server in &nodes[1..] {
            readers.push(YClient::join(&server.ws_url(&room)).await);
        }
        readers
    };
    let writer = YClient::join(&nodes[0].ws_url(&room)).await;
    let mut expected = String::new();
    for i in 0..40 {
        let line = format!("line {i}\n");
        writer.append("a.txt", &line);
        expected.push_str(&line);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for reader in &readers {
        reader.wait_text("a.txt", &expected, ACROSS).await;
    }
    // Everything written: the author's node wrote the rows, the others none.
    eventually(
        ACROSS,
        "the author's node to write every update",
        || async { (nodes[0].metric("duet_rooms_unflushed").await == 0).then_some(()) },
    )
    .await;
    let written = nodes[0].metric("duet_update_rows_written_total").await;
    let others = [
        nodes[1].metric("duet_update_rows_written_total").await,
        nodes[2].metric("duet_update_rows_written_total").await,
    ];
    let stored = rows(&db, &room);
    let repairs = nodes[1].metric("duet_relay_repairs_total").await;
    println!("update rows: author's node {written}, other nodes {others:?}, in the store {stored}; repairs {repairs}");
    assert_eq!(others, [0, 0], "relayed updates were written again");
    assert_eq!(stored, written);
    assert!(stored > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_loading_a_room_gets_the_updates_another_has_not_written() {
    let redis = Redis::start().await;
    let db = Database::new(Backend::Postgres);
    // Nothing is written for a minute: what the first node has is only in its memory.
    let slow = ["--flush-interval-ms", "60000"];
    let first = node(&db, &redis.url(), &slow).await;
    let second = node(&db, &redis.url(), &slow).await;
    let room = first.create_room_with(&[("a.txt", "stored\n")]).await;
    let ann = YClient::join(&first.ws_url(&room)).await;
    ann.append("a.txt", "unwritten\n");
    eventually(WAIT, "the first node to have the edit", || async {
        (first.file(&room, "a.txt").await.as_deref() == Some("stored\nunwritten\n")).then_some(())
    })
    .await;
    assert_eq!(rows(&db, &room), 0, "nothing written yet");
    // The second node loads the room from the store and asks the first before its first
    // peer starts.
    let bob = YClient::join(&second.ws_url(&room)).await;
    bob.wait_synced().await;
    assert_eq!(bob.text("a.txt").as_deref(), Some("stored\nunwritten\n"));
    assert_eq!(
        second.file(&room, "a.txt").await.as_deref(),
        Some("stored\nunwritten\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_relay_message_is_repaired_by_the_heartbeats() {
    let redis = Redis::start().await;
    let tap = Tap::start(redis.port).await;
    let db = Database::new(Backend::Postgres);
    let first = node(&db, &redis.url(), &[]).await;
    let second = node(&db, &tap.url(), &[]).await;
    let room = first.create_room_with(&[("a.txt", "")]).await;
    let ann = YClient::join(&first.ws_url(&room)).await;
    let bob = YClient::join(&second.ws_url(&room)).await;
    ann.append("a.txt", "one\n");
    bob.wait_text("a.txt", "one\n", ACROSS).await;
    assert_eq!(second.metric("duet_relay_repairs_total").await, 0);

    tap.lose_next_update();
    ann.append("a.txt", "two\n");
    eventually(WAIT, "the tap to lose the update", || async {
        (tap.lost() == 1).then_some(())
    })
    .await;
    // Nothing else carries it: only a heartbeat's answer can.
    bob.wait_text("a.txt", "one\ntwo\n", ACROSS).await;
    assert!(second.metric("duet_relay_repairs_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_and_a_10s_cut_lose_nothing() {
    let mut redis = Redis::start().await;
    let tap = Tap::start(redis.port).await;
    let db = Database::new(Backend::Postgres);
    let first = node(&db, &redis.url(), &[]).await;
    let second = node(&db, &tap.url(), &[]).await;
    wait_ready(&first, true).await;
    wait_ready(&second, true).await;
    let room = first.create_room_with(&[("a.txt", "")]).await;
    let (ann, ann2) = (
        YClient::join(&first.ws_url(&room)).await,
        YClient::join(&first.ws_url(&room)).await,
    );
    let (bob, bob2) = (
        YClient::join(&second.ws_url(&room)).await,
        YClient::join(&second.ws_url(&room)).await,
    );

    // Redis restarts: both nodes report it, keep serving their own peers, then sync.
    redis.kill();
    wait_ready(&first, false).await;
    wait_ready(&second, false).await;
    let (_, body) = readyz(&first).await;
    assert_eq!(body["relay"], json!("unreachable"), "{body}");
    ann.insert("a.txt", 0, "ann during the restart\n");
    bob.insert("a.txt", 0, "bob during the restart\n");
    ann2.wait_text("a.txt", "ann during the restart\n", WAIT)
        .await;
    bob2.wait_text("a.txt", "bob during the restart\n", WAIT)
        .await;
    redis.up().await;
    wait_ready(&first, true).await;
    wait_ready(&second, true).await;
    let both = eventually(ACROSS, "both edits on both nodes", || async {
        let a = ann.text("a.txt")?;
        (a.contains("ann during") && a.contains("bob during") && bob.text("a.txt")? == a)
            .then_some(a)
    })
    .await;

    // The second node is cut from Redis for 10 s: both sides keep editing.
    tap.cut();
    wait_ready(&second, false).await;
    ann.append("a.txt", "ann during the cut\n");
    bob.append("a.txt", "bob during the cut\n");
    bob2.wait_text("a.txt", &format!("{both}bob during the cut\n"), WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    tap.restore();
    wait_ready(&second, true).await;
    let text = eventually(ACROSS, "the cut's edits on both nodes", || async {
        let a = ann.text("a.txt")?;
        (a.contains("ann during the cut")
            && a.contains("bob during the cut")
            && bob.text("a.txt")? == a)
            .then_some(a)
    })
    .await;
    for client in [&ann2, &bob2] {
        client.wait_text("a.txt", &text, ACROSS).await;
    }
    let markers: Vec<String> = [
        "ann during the restart",
        "bob during the restart",
        "ann during the cut",
        "bob during the cut",
    ]
    .map(String::from)
    .to_vec();
    each_once(&text, &markers);

    // The plain-text copy in the store catches up with edits from both nodes (each node
    // copies what its peers change, and later what the other's changed).
    let copy_sql = format!(
        "SELECT content FROM room_files WHERE room_id = '{}' AND path = 'a.txt'",
        room.id
    );
    eventually(ACROSS, "the stored copy to hold the final text", || async {
        (db.sql(&copy_sql).strip_suffix('\n') == Some(text.as_str())).then_some(())
    })
    .await;

    // And the store has it all: a fresh node, after both stop, loads exactly this text.
    let (mut first, mut second) = (first, second);
    assert!(first.terminate().await && second.terminate().await);
    let fresh = node(&db, &redis.url(), &[]).await;
    assert_eq!(
        fresh.file(&room, "a.txt").await.as_deref(),
        Some(text.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_peers_reconnect_through_nginx_and_nothing_is_lost() {
    // Writes are rare (5 s): what the killed node's peers typed is, at its death, only in
    // memory — on that node and, relayed, on the others.
    let Cluster {
        mut nodes,
        nginx,
        ca,
        db,
        redis,
    } = Cluster::start(&["--flush-interval-ms", "5000"]).await;
    let room = nodes[0].create_room_with(&[("a.txt", "")]).await;
    let trust = [("NODE_EXTRA_CA_CERTS", ca.ca_file.as_os_str())];
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = NodeClient::spawn_with_env(&trust);
        client.connect(&nginx.ws_base(), &room).await;
        clients.push(client);
    }
    // Round-robin put the clients on the nodes: kill one that has some.
    let mut victim = None;
    for (i, server) in nodes.iter().enumerate() {
        if server.metric("duet_connections_open").await > 0 {
            victim = Some(i);
        }
    }
    let victim = victim.expect("a node with clients");
    let mut markers = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let line = format!("client {i} before the kill\n");
        markers.push(line.trim().to_string());
        client
            .ok(json!({"cmd": "type", "file": "a.txt", "text": line, "at": 0, "delayMs": 0}))
            .await;
    }
    let before = text_with(&mut clients[0], "a.txt", &markers).await;
    for client in &mut clients {
        client
            .ok(json!({"cmd": "waitText", "file": "a.txt", "text": before, "timeoutMs": 20000}))
            .await;
    }
    assert_eq!(rows(&db, &room), 0, "nothing written before the kill");
    nodes[victim].kill9();

    // The clients reconnect through nginx to the living nodes and keep typing.
    for (i, client) in clients.iter_mut().enumerate() {
        let line = format!("client {i} after the kill\n");
        markers.push(line.trim().to_string());
        client
            .ok(json!({"cmd": "type", "file": "a.txt", "text": line, "at": 0, "delayMs": 0}))
            .await;
    }
    let text = text_with(&mut clients[0], "a.txt", &markers).await;
    for client in clients.iter_mut() {
        client
            .ok(json!({"cmd": "waitText", "file": "a.txt", "text": text, "timeoutMs": 20000}))
            .await;
    }
    each_once(&text, &markers);

    // The living nodes noticed the silence and wrote the whole document (it holds what the
    // dead node had not written); then they stop, and a fresh node loads every line, once.
    eventually(
        ACROSS,
        "a living node to write what the dead one had not",
        || async {
            let mut compactions = 0;
            for (i, server) in nodes.iter().enumerate() {
                if i != victim {
                    compactions += server.metric("duet_compactions_total").await;
                }
            }
            (compactions > 0).then_some(())
        },
    )
    .await;
    for (i, server) in nodes.iter_mut().enumerate() {
        if i != victim {
            assert!(server.terminate().await);
        }
    }
    let fresh = node(&db, &redis.url(), &[]).await;
    assert_eq!(
        fresh.file(&room, "a.txt").await.as_deref(),
        Some(text.as_str())
    );
}
