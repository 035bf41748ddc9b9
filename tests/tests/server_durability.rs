//! Nothing typed is lost: graceful restarts, `kill -9`, idle unloading, compaction, and the
//! database going away — on both stores.

use std::time::Duration;

use duet_e2e::node::NodeClient;
use duet_e2e::on_both_backends;
use duet_e2e::pg::Cluster;
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};

const SECOND: Duration = Duration::from_secs(1);

on_both_backends! {
    graceful_restart_closes_cleanly_and_keeps_everything => graceful_restart_closes_cleanly_and_keeps_everything;
    kill_9_keeps_what_was_flushed_and_clients_resync_the_rest => kill_9_keeps_what_was_flushed_and_clients_resync_the_rest;
    idle_rooms_unload_and_compacted_rooms_reload => idle_rooms_unload_and_compacted_rooms_reload;
    kill_9_mid_typing_serves_every_flushed_update_not_the_stale_copy => kill_9_mid_typing_serves_every_flushed_update_not_the_stale_copy;
}

async fn graceful_restart_closes_cleanly_and_keeps_everything(backend: Backend) {
    let db = Database::new(backend);
    let mut server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("main.py", "")]).await;
    let client = YClient::join(&server.ws_url(&room)).await;
    let mut typed = String::new();
    for i in 0..200 {
        let piece = format!("{i} é🎉世\n");
        client.append("main.py", &piece);
        typed.push_str(&piece);
    }
    duet_e2e::eventually(5 * SECOND, "the server to have every edit", || async {
        (server.file(&room, "main.py").await.as_deref() == Some(typed.as_str())).then_some(())
    })
    .await;
    // Whatever is still buffered is written on SIGTERM, and the socket gets a close frame.
    assert!(server.terminate().await, "duet-server exits 0 on SIGTERM");
    let (code, reason) = client.wait_closed(5 * SECOND).await;
    assert_eq!(
        (code, reason.as_str()),
        (1001, "server shutting down"),
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("all rooms flushed"), "{log}");

    server.restart().await;
    assert_eq!(
        server.file(&room, "main.py").await.as_deref(),
        Some(typed.as_str())
    );
    let again = YClient::join(&server.ws_url(&room)).await;
    assert_eq!(again.text("main.py").as_deref(), Some(typed.as_str()));
}

async fn kill_9_keeps_what_was_flushed_and_clients_resync_the_rest(backend: Backend) {
    let db = Database::new(backend);
    let mut server = Server::start(&db, &["--flush-interval-ms", "100"]).await;
    let room = server.create_room_with(&[("a.txt", "start\n")]).await;

    // Flushed before the crash: survives it with no client around to help.
    let early = YClient::join(&server.ws_url(&room)).await;
    early.append("a.txt", "flushed line\n");
    duet_e2e::eventually(5 * SECOND, "the flush", || async {
        (server.metric("duet_updates_written_total").await >= 1).then_some(())
    })
    .await;
    drop(early);
    server.kill9();
    server.restart().await;
    assert_eq!(
        server.file(&room, "a.txt").await.as_deref(),
        Some("start\nflushed line\n")
    );

    // Not flushed before the crash: the stock provider reconnects by itself and re-syncs it,
    // together with what it typed while the server was down.
    let mut ann = NodeClient::spawn();
    ann.connect(&server.ws_base(), &room).await;
    ann.ok(json!({"cmd": "insert", "file": "a.txt", "text": "typed just before the crash\n"}))
        .await;
    server.kill9();
    ann.ok(json!({"cmd": "insert", "file": "a.txt", "text": "typed while it was down\n"}))
        .await;
    server.restart().await;
    let expected = "start\nflushed line\ntyped just before the crash\ntyped while it was down\n";
    duet_e2e::eventually(20 * SECOND, "the reconnected client to re-sync", || async {
        (server.file(&room, "a.txt").await.as_deref() == Some(expected)).then_some(())
    })
    .await;
    // And once written, it survives another crash.
    duet_e2e::eventually(5 * SECOND, "the flush", || async {
        (server.metric("duet_updates_written_total").await >= 1).then_some(())
    })
    .await;
    drop(ann);
    server.kill9();
    server.restart().await;
    assert_eq!(server.file(&room, "a.txt").await.as_deref(), Some(expected));
}

async fn idle_rooms_unload_and_compacted_rooms_reload(backend: Backend) {
    let db = Database::new(backend);
    let args = [
        "--idle-unload-secs",
        "1",
        "--compact-after",
        "10",
        "--flush-interval-ms",
        "50",
    ];
    let mut server = Server::start(&db, &args).await;
    let room = server.create_room(json!({})).await;
    let client = YClient::join(&server.ws_url(&room)).await;
    let mut typed = String::new();
    for i in 0..60 {
        let piece = format!("line {i}\n");
        client.append("log.txt", &piece);
        typed.push_str(&piece);
        // Each flush stores what arrived since the last as one row: spread the typing over
        // more than ten flushes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.wait_text("log.txt", &typed, 5 * SECOND).await;
    drop(client);
    duet_e2e::eventually(10 * SECOND, "the idle room to unload", || async {
        (server.metric("duet_rooms_unloaded_total").await == 1).then_some(())
    })
    .await;
    assert!(
        server.metric("duet_compactions_total").await >= 1,
        "60 updates over more than 10 flushes with --compact-after 10"
    );
    // Served from the store while unloaded, and whole again when someone joins.
    assert_eq!(
        server.file(&room, "log.txt").await.as_deref(),
        Some(typed.as_str())
    );
    let again = YClient::join(&server.ws_url(&room)).await;
    assert_eq!(again.text("log.txt").as_deref(), Some(typed.as_str()));
    assert_eq!(server.metric("duet_rooms_loaded_total").await, 2);
    drop(again);
    server.kill9();
    server.restart().await;
    let third = YClient::join(&server.ws_url(&room)).await;
    assert_eq!(third.text("log.txt").as_deref(), Some(typed.as_str()));
}

/// While typing goes on, flushes write the update log but not the files' plain-text copies, and
/// mark them stale. After `kill -9` then, the REST API answers from the log: every update
/// written before the crash is in the text it serves, and the copies are brought up to date.
async fn kill_9_mid_typing_serves_every_flushed_update_not_the_stale_copy(backend: Backend) {
    let db = Database::new(backend);
    let mut server = Server::start(&db, &["--flush-interval-ms", "50"]).await;
    let room = server.create_room_with(&[("a.txt", "start\n")]).await;
    let client = YClient::join(&server.ws_url(&room)).await;
    let pieces: Vec<String> = (0..2000).map(|i| format!("{i} é🎉\n")).collect();
    let (mut typed, mut written) = (0, 0);
    // Typing, 50 keystrokes a second, until at least 20 of them are written.
    while written < 20 {
        client.append("a.txt", &pieces[typed]);
        typed += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        written = server.metric("duet_updates_written_total").await;
    }
    server.kill9();
    let key = &room.id;
    assert_eq!(
        db.sql(&format!(
            "SELECT copies_stale FROM rooms WHERE id = '{key}'"
        ))
        .trim(),
        "1",
        "a crash mid-typing leaves the copies marked stale"
    );
    let stored_copy = db.sql(&format!(
        "SELECT content FROM room_files WHERE room_id = '{key}' AND path = 'a.txt'"
    ));
    assert!(
        !stored_copy.contains(&pieces[written as usize - 1]),
        "the stored copy lags behind the log: {stored_copy:?}"
    );

    server.restart().await;
    let text = server.file(&room, "a.txt").await.expect("the file");
    let served = pieces
        .iter()
        .take(typed)
        .scan(String::from("start\n"), |text, piece| {
            text.push_str(piece);
            Some(text.clone())
        })
        .position(|prefix| prefix == text)
        .map(|at| at + 1);
    let served = served.unwrap_or_else(|| panic!("not what was typed: {text:?}"));
    assert!(
        served as u64 >= written,
        "{written} updates were written before the crash, {served} are served"
    );
    let info = server.room_info(&room).await;
    assert_eq!(info["files"][0]["size"], json!(text.len()), "{info}");
    // The copies are written again and marked current.
    duet_e2e::eventually(10 * SECOND, "the copies to be written", || async {
        let stale = db.sql(&format!(
            "SELECT copies_stale FROM rooms WHERE id = '{key}'"
        ));
        let copy = db.sql(&format!(
            "SELECT content FROM room_files WHERE room_id = '{key}' AND path = 'a.txt'"
        ));
        (stale.trim() == "0" && copy.trim_end() == text.trim_end()).then_some(())
    })
    .await;
}

async fn readyz(server: &Server) -> (u16, Value) {
    let response = server.http.get(server.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Types while the store is away; edits keep flowing between peers, `/readyz` says degraded,
/// and when the store is back everything is written.
async fn edits_flow_through_an_outage(
    server: &mut Server,
    stop: impl FnOnce(),
    start: impl FnOnce(),
) {
    let room = server.create_room_with(&[("a.txt", "")]).await;
    let ann = YClient::join(&server.ws_url(&room)).await;
    let bob = YClient::join(&server.ws_url(&room)).await;
    ann.append("a.txt", "before\n");
    bob.wait_text("a.txt", "before\n", 5 * SECOND).await;

    stop();
    for i in 0..20 {
        ann.append("a.txt", &format!("during {i}\n"));
    }
    let expected: String = std::iter::once("before\n".to_string())
        .chain((0..20).map(|i| format!("during {i}\n")))
        .collect();
    bob.wait_text("a.txt", &expected, 5 * SECOND).await;
    let (status, body) =
        duet_e2e::eventually(20 * SECOND, "/readyz to report degraded", || async {
            let (status, body) = readyz(server).await;
            (status == 503).then_some((status, body))
        })
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("degraded")),
        "{body}"
    );
    // Rooms that are loaded keep answering from memory.
    assert_eq!(
        server.file(&room, "a.txt").await.as_deref(),
        Some(expected.as_str())
    );

    start();
    duet_e2e::eventually(30 * SECOND, "/readyz to recover", || async {
        (readyz(server).await.0 == 200).then_some(())
    })
    .await;
    drop((ann, bob));
    server.kill9();
    server.restart().await;
    assert_eq!(
        server.file(&room, "a.txt").await.as_deref(),
        Some(expected.as_str()),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    let cluster = Cluster::start();
    let db = Database::with_url(Backend::Postgres, cluster.url());
    let mut server = Server::start(&db, &["--flush-interval-ms", "100"]).await;
    // New rooms cannot be created without the database, and say so.
    cluster.down();
    let response = server
        .http
        .post(server.url("/rooms"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    cluster.up();
    edits_flow_through_an_outage(&mut server, || cluster.down(), || cluster.up()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_loses_nothing() {
    // SQLite has no server to stop: another process holding an exclusive lock on the file is
    // what "the database is unavailable" looks like to it.
    let db = Database::new(Backend::Sqlite);
    let mut server = Server::start(&db, &["--flush-interval-ms", "100"]).await;
    let path = db.url.trim_start_matches("sqlite://").to_string();
    let locker = std::sync::Mutex::new(None::<std::process::Child>);
    let lock = || {
        let child = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3, sys, time\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN EXCLUSIVE')\n\
                 print('locked', flush=True)\n\
                 time.sleep(120)\n",
            )
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut child = child;
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        *locker.lock().unwrap() = Some(child);
    };
    let unlock = || {
        if let Some(mut child) = locker.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    };
    edits_flow_through_an_outage(&mut server, lock, unlock).await;
}
