//! Rooms with a memory: versions over REST, restores that reach every peer while they type,
//! versions taken on their own, retention, and versions through `kill -9` — on both stores.

use std::time::Duration;

use duet_e2e::node::NodeClient;
use duet_e2e::on_both_backends;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::yclient::YClient;
use reqwest::Method;
use serde_json::{json, Value};
use yrs::{Map, TextPrelim};

const SECOND: Duration = Duration::from_secs(1);

/// No version is taken on its own while a test does not expect one.
const NO_INTERVAL: [&str; 2] = ["--version-interval-secs", "3600"];

on_both_backends! {
    versions_over_rest => versions_over_rest;
    rest_errors_are_json_with_reasons => rest_errors_are_json_with_reasons;
    a_restore_reaches_two_typing_stock_clients_and_loses_nothing => a_restore_reaches_two_typing_stock_clients_and_loses_nothing;
    versions_are_taken_while_editing_and_when_the_last_peer_leaves => versions_are_taken_while_editing_and_when_the_last_peer_leaves;
    old_versions_are_pruned => old_versions_are_pruned;
    versions_survive_kill_9 => versions_survive_kill_9;
    small_edits_to_a_large_file_are_stored_as_patches => small_edits_to_a_large_file_are_stored_as_patches;
}

/// The ids of versions, in the order listed.
fn ids(versions: &[Value]) -> Vec<i64> {
    versions.iter().map(|v| v["id"].as_i64().unwrap()).collect()
}

fn changes(version: &Value) -> Vec<(String, String)> {
    version["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn wait_server_text(server: &Server, room: &RoomRef, path: &str, text: &str) {
    duet_e2e::eventually(
        5 * SECOND,
        &format!("the server to have {path}"),
        || async { (server.file(room, path).await.as_deref() == Some(text)).then_some(()) },
    )
    .await;
}

async fn versions_over_rest(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &NO_INTERVAL).await;
    let room = server
        .create_room_with(&[("main.py", "one\n"), ("notes.md", "n\n")])
        .await;
    assert!(server.versions(&room).await.is_empty());

    let ann = YClient::join(&server.ws_url(&room)).await;
    ann.set_presence(json!({"user": {"name": "Ann", "color": "#ff0000"}}));
    ann.append("main.py", "two\n");
    wait_server_text(&server, &room, "main.py", "one\ntwo\n").await;
    let first = server.take_version(&room, "first").await;
    assert_eq!(first["id"], json!(1));
    assert_eq!(first["label"], json!("first"));
    assert_eq!(first["reason"], json!("request"));
    assert_eq!(first["authors"], json!(["Ann"]));
    assert!(first["created_at"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(
        changes(&first),
        pairs(&[("main.py", "added"), ("notes.md", "added")])
    );

    // A file changed, one removed, one added.
    ann.append("notes.md", "more\n");
    ann.transact(|txn, files| {
        files.remove(txn, "main.py");
        files.insert(txn, "new.txt", TextPrelim::new("new"));
    });
    wait_server_text(&server, &room, "new.txt", "new").await;
    let second = server.take_version(&room, "second").await;
    assert_eq!(second["id"], json!(2));
    assert_eq!(
        changes(&second),
        pairs(&[
            ("main.py", "removed"),
            ("new.txt", "added"),
            ("notes.md", "changed")
        ])
    );
    // Nothing changed since: a labelled version still is one, with no files.
    let third = server.take_version(&room, "bookmark").await;
    assert_eq!((third["id"].clone(), changes(&third)), (json!(3), vec![]));
    assert_eq!(third["authors"], json!([]));

    // Each version's texts, unchanged files included.
    assert_eq!(
        server.version_file(&room, 1, "main.py").await.as_deref(),
        Some("one\ntwo\n")
    );
    assert_eq!(server.version_file(&room, 2, "main.py").await, None);
    assert_eq!(
        server.version_file(&room, 3, "notes.md").await.as_deref(),
        Some("n\nmore\n")
    );
    assert_eq!(
        server.version_file(&room, 1, "notes.md").await.as_deref(),
        Some("n\n")
    );
    assert_eq!(server.version_file(&room, 1, "new.txt").await, None);
    // A version alone, with every file it has (a restore of all of it gives the room those).
    for (id, paths) in [
        (1, json!(["main.py", "notes.md"])),
        (2, json!(["new.txt", "notes.md"])),
        (3, json!(["new.txt", "notes.md"])),
    ] {
        let (status, version) = server
            .call(Method::GET, &room, &format!("/versions/{id}"), None)
            .await;
        assert_eq!(status, 200, "{version}");
        assert_eq!(
            (version["id"].clone(), version["paths"].clone()),
            (json!(id), paths)
        );
    }
    let (_, second_alone) = server.call(Method::GET, &room, "/versions/2", None).await;
    assert_eq!(second_alone["files"], second["files"]);
    assert_eq!(second_alone["label"], json!("second"));

    // Newest first, a page at a time.
    assert_eq!(ids(&server.versions(&room).await), vec![3, 2, 1]);
    let (status, page) = server
        .call(Method::GET, &room, "/versions?limit=2", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(ids(page["versions"].as_array().unwrap()), vec![3, 2]);
    assert_eq!(page["next_before"], json!(2));
    let (_, page) = server
        .call(Method::GET, &room, "/versions?limit=2&before=2", None)
        .await;
    assert_eq!(ids(page["versions"].as_array().unwrap()), vec![1]);
    assert_eq!(page["next_before"], Value::Null);

    // Restoring everything: the removed file comes back, the added one goes, and the
    // version taken just before holds what the restore replaced.
    let (status, restored) = server
        .call(
            Method::POST,
            &room,
            "/versions/1/restore",
            Some(json!({"author": "Bob"})),
        )
        .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(
        restored["restored"],
        json!(["main.py", "new.txt", "notes.md"])
    );
    let before = &restored["before"];
    assert_eq!(before["id"], json!(4));
    assert_eq!(before["reason"], json!("restore"));
    assert_eq!(before["label"], json!("before restoring version 1"));
    ann.wait_text("main.py", "one\ntwo\n", 5 * SECOND).await;
    ann.wait_text("notes.md", "n\n", 5 * SECOND).await;
    duet_e2e::eventually(5 * SECOND, "new.txt to go", || async {
        ann.text("new.txt").is_none().then_some(())
    })
    .await;
    assert_eq!(
        server.version_file(&room, 4, "new.txt").await.as_deref(),
        Some("new")
    );
    assert_eq!(server.version_file(&room, 4, "main.py").await, None);

    // One file from the version before the restore: only it changes.
    let (status, restored) = server
        .call(
            Method::POST,
            &room,
            "/versions/4/restore",
            Some(json!({"paths": ["./new.txt"]})),
        )
        .await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["restored"], json!(["new.txt"]));
    ann.wait_text("new.txt", "new", 5 * SECOND).await;
    assert_eq!(ann.text("main.py").as_deref(), Some("one\ntwo\n"));
    // Restoring what is already there changes nothing and takes no version.
    let (status, again) = server
        .call(
            Method::POST,
            &room,
            "/versions/4/restore",
            Some(json!({"paths": ["new.txt"]})),
        )
        .await;
    assert_eq!((status, again["restored"].clone()), (200, json!([])));
    assert_eq!(again["before"], Value::Null);

    // A restore is an edit by the restorer: the next version names them.
    assert_eq!(restored["before"]["id"], json!(5));
    assert_eq!(restored["before"]["authors"], json!(["Bob"]));
    let after = server.take_version(&room, "after").await;
    assert_eq!(after["id"], json!(6), "{after}");
    assert_eq!(after["authors"], json!(["anonymous"]), "{after}");

    // Deleting the room deletes its versions.
    let (status, _) = server.call(Method::DELETE, &room, "", None).await;
    assert_eq!(status, 204);
    for table in [
        "room_versions",
        "room_version_files",
        "room_unversioned",
        "room_unversioned_authors",
    ] {
        assert_eq!(
            db.sql(&format!(
                "SELECT COUNT(*) FROM {table} WHERE room_id = '{}'",
                room.id
            ))
            .trim(),
            "0",
            "{table}"
        );
    }
}

async fn rest_errors_are_json_with_reasons(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &NO_INTERVAL).await;
    let room = server.create_room_with(&[("a.txt", "a")]).await;
    server.take_version(&room, "one").await;
    let http = &server.http;

    let url = server.url(&format!("/rooms/{}/versions", room.id));
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = http
        .post(server.url(&format!("/rooms/{}/versions/1/restore", room.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let long = "x".repeat(201);
    let cases: Vec<(Method, String, Option<Value>, u16, &str)> = vec![
        (Method::GET, "/versions?limit=0".into(), None, 400, "limit"),
        (
            Method::GET,
            "/versions?limit=501".into(),
            None,
            400,
            "limit",
        ),
        (Method::GET, "/versions?limit=x".into(), None, 400, ""),
        (
            Method::GET,
            "/versions/0/files/a.txt".into(),
            None,
            400,
            "malformed version",
        ),
        (
            Method::GET,
            "/versions/01/files/a.txt".into(),
            None,
            400,
            "malformed version",
        ),
        (
            Method::GET,
            "/versions/abc/files/a.txt".into(),
            None,
            400,
            "malformed version",
        ),
        (
            Method::GET,
            "/versions/9".into(),
            None,
            404,
            "no such version",
        ),
        (
            Method::GET,
            "/versions/x1".into(),
            None,
            400,
            "malformed version",
        ),
        (
            Method::GET,
            "/versions/9/files/a.txt".into(),
            None,
            404,
            "no such version",
        ),
        (
            Method::GET,
            "/versions/1/files/b.txt".into(),
            None,
            404,
            "no file",
        ),
        (
            Method::GET,
            "/versions/1/files/..%2Fx".into(),
            None,
            400,
            "leaves the workspace",
        ),
        (
            Method::POST,
            "/versions".into(),
            Some(json!({"label": long})),
            400,
            "longer than",
        ),
        (
            Method::POST,
            "/versions".into(),
            Some(json!({"label": "a\u{7}b"})),
            400,
            "control",
        ),
        (
            Method::POST,
            "/versions".into(),
            Some(json!({"labl": "x"})),
            400,
            "unknown field",
        ),
        (
            Method::POST,
            "/versions/9/restore".into(),
            None,
            404,
            "no such version",
        ),
        (
            Method::POST,
            "/versions/1/restore".into(),
            Some(json!({"paths": []})),
            400,
            "empty",
        ),
        (
            Method::POST,
            "/versions/1/restore".into(),
            Some(json!({"paths": ["../x"]})),
            400,
            "leaves",
        ),
        (
            Method::POST,
            "/versions/1/restore".into(),
            Some(json!({"paths": ["b.txt"]})),
            404,
            "no file",
        ),
        (
            Method::POST,
            "/versions/1/restore".into(),
            Some(json!({"paths": "a.txt"})),
            400,
            "invalid JSON",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let (got, reply) = server.call(method.clone(), &room, &path, body).await;
        assert_eq!(got, status, "{method} {path}: {reply}");
        let error = reply["error"].as_str().unwrap_or_else(|| panic!("{reply}"));
        assert!(error.contains(says), "{method} {path}: {error}");
    }
    // A body that is not JSON at all.
    let response = http
        .post(&url)
        .bearer_auth(&room.token)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let reply: Value = response.json().await.unwrap();
    assert!(reply["error"].as_str().unwrap().contains("invalid JSON"));
    // Nothing above changed the room or its versions.
    assert_eq!(ids(&server.versions(&room).await), vec![1]);
    assert_eq!(server.file(&room, "a.txt").await.as_deref(), Some("a"));
}

async fn a_restore_reaches_two_typing_stock_clients_and_loses_nothing(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &NO_INTERVAL).await;
    let good = "def f():\n    return 1\n";
    let room = server
        .create_room_with(&[("main.py", good), ("notes.txt", "")])
        .await;
    let mut ann = NodeClient::spawn();
    let mut bob = NodeClient::spawn();
    for (client, name) in [(&mut ann, "Ann"), (&mut bob, "Bob")] {
        client
            .ok(
                json!({"cmd": "connect", "url": server.ws_base(), "room": room.id,
                "token": room.token, "awareness": {"user": {"name": name}}}),
            )
            .await;
    }
    server.take_version(&room, "good").await;

    // Bob breaks main.py.
    let len = good.encode_utf16().count();
    bob.ok(json!({"cmd": "delete", "file": "main.py", "index": 0, "len": len}))
        .await;
    bob.ok(json!({"cmd": "insert", "file": "main.py", "index": 0, "text": "oops\n"}))
        .await;
    ann.ok(json!({"cmd": "waitText", "file": "main.py", "text": "oops\n"}))
        .await;

    // Ann types notes, Bob keeps typing at the end of main.py, and main.py is restored in
    // the middle of it.
    let ann_typed: String = (0..150).map(|i| format!("a{i} ")).collect();
    let bob_typed: String = (0..150).map(|i| format!("b{i};")).collect();
    let typing = |file: &str, text: &str| json!({"cmd": "type", "file": file, "text": text, "delayMs": 4, "at": "end"});
    let restore = async {
        duet_e2e::eventually(20 * SECOND, "Bob's first keystrokes", || async {
            let text = server.file(&room, "main.py").await?;
            text.contains("b9;").then_some(())
        })
        .await;
        let (status, reply) = server
            .call(
                Method::POST,
                &room,
                "/versions/1/restore",
                Some(json!({"paths": ["main.py"], "author": "Cat"})),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        reply
    };
    let (_, _, restored) = tokio::join!(
        ann.ok(typing("notes.txt", &ann_typed)),
        bob.ok(typing("main.py", &bob_typed)),
        restore
    );
    assert_eq!(restored["restored"], json!(["main.py"]));
    let before = restored["before"]["id"].as_i64().unwrap();

    // Everyone ends with the same text: the restored file, then what Bob typed after it.
    let deadline = tokio::time::Instant::now() + 10 * SECOND;
    let server_text = loop {
        let text = server.file(&room, "main.py").await.unwrap();
        let (a, b) = (ann.text("main.py").await, bob.text("main.py").await);
        if a == text && b == text {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreement: server {text:?}, Ann {a:?}, Bob {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = server_text
        .strip_prefix(good)
        .unwrap_or_else(|| panic!("main.py is not restored: {server_text:?}"));
    // What Bob typed before the restore is in the version taken just before it.
    let replaced = server
        .version_file(&room, before, "main.py")
        .await
        .expect("main.py in the version before the restore");
    let typed_before = replaced
        .strip_prefix("oops\n")
        .unwrap_or_else(|| panic!("the version before the restore: {replaced:?}"));
    assert_eq!(
        format!("{typed_before}{after}"),
        bob_typed,
        "every keystroke of Bob's is either replaced (and kept in version {before}) or after the restore"
    );
    assert!(!typed_before.is_empty(), "the restore came while Bob typed");
    // Ann's notes are whole everywhere.
    for text in [
        ann.text("notes.txt").await,
        bob.text("notes.txt").await,
        server.file(&room, "notes.txt").await.unwrap(),
    ] {
        assert_eq!(text, ann_typed);
    }
}

async fn versions_are_taken_while_editing_and_when_the_last_peer_leaves(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &["--version-interval-secs", "1"]).await;
    let room = server.create_room_with(&[("log.txt", "")]).await;
    let ann = YClient::join(&server.ws_url(&room)).await;
    ann.set_presence(json!({"user": {"name": "Ann"}}));
    let bob = YClient::join(&server.ws_url(&room)).await;
    bob.set_presence(json!({"user": {"name": "Bob"}}));
    // Bob makes one edit and leaves: he is an author of the next version all the same.
    bob.append("log.txt", "bob\n");
    ann.wait_text("log.txt", "bob\n", 5 * SECOND).await;
    drop(bob);

    // Ann types on until the interval has passed: a version is taken while she does.
    let mut typed = "bob\n".to_string();
    let mut line = 0;
    let interval = loop {
        line += 1;
        let piece = format!("line {line}\n");
        ann.append("log.txt", &piece);
        typed.push_str(&piece);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let versions = server.versions(&room).await;
        if let Some(v) = versions.iter().find(|v| v["reason"] == json!("interval")) {
            break v.clone();
        }
        assert!(line < 400, "no version after 20 s of typing: {versions:?}");
    };
    assert_eq!(interval["authors"], json!(["Ann", "Bob"]), "{interval}");
    assert_eq!(changes(&interval), pairs(&[("log.txt", "added")]));
    // The last peer leaves: what she typed since gets a version.
    ann.append("log.txt", "last\n");
    typed.push_str("last\n");
    wait_server_text(&server, &room, "log.txt", &typed).await;
    drop(ann);
    let deadline = tokio::time::Instant::now() + 10 * SECOND;
    let left = loop {
        let versions = server.versions(&room).await;
        if let Some(left) = versions.first().filter(|v| v["reason"] == json!("left")) {
            break left.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no version when Ann left: {versions:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(left["authors"], json!(["Ann"]));
    let id = left["id"].as_i64().unwrap();
    assert_eq!(
        server.version_file(&room, id, "log.txt").await.as_deref(),
        Some(typed.as_str())
    );
}

async fn old_versions_are_pruned(backend: Backend) {
    let db = Database::new(backend);
    let args = [
        NO_INTERVAL.as_slice(),
        &["--keep-versions", "3", "--keep-versions-days", "1"],
    ]
    .concat();
    let server = Server::start(&db, &args).await;
    let room = server
        .create_room_with(&[("a.txt", "0"), ("b.txt", "kept")])
        .await;
    let ann = YClient::join(&server.ws_url(&room)).await;
    let mut text = "0".to_string();
    for i in 1..=6 {
        ann.append("a.txt", &i.to_string());
        text.push_str(&i.to_string());
        wait_server_text(&server, &room, "a.txt", &text).await;
        server.take_version(&room, &format!("v{i}")).await;
    }
    assert_eq!(ids(&server.versions(&room).await), vec![6, 5, 4]);
    // The oldest kept still has every file, those unchanged since version 1 included.
    assert_eq!(
        server.version_file(&room, 4, "b.txt").await.as_deref(),
        Some("kept")
    );
    assert_eq!(
        server.version_file(&room, 4, "a.txt").await.as_deref(),
        Some("01234")
    );
    assert_eq!(server.version_file(&room, 3, "a.txt").await, None);
    // Only the texts the kept versions need are stored: a.txt at 4, 5, 6 and b.txt once.
    let rows = db.sql(&format!(
        "SELECT COUNT(*) FROM room_version_files WHERE room_id = '{}'",
        room.id
    ));
    assert_eq!(rows.trim(), "4");

    // Versions past the age limit go too (as if 4 and 5 had been taken long ago).
    db.sql(&format!(
        "UPDATE room_versions SET created_at = 0 WHERE room_id = '{}' AND seq IN (4, 5)",
        room.id
    ));
    server.take_version(&room, "v7").await;
    assert_eq!(ids(&server.versions(&room).await), vec![7, 6]);
    assert_eq!(
        server.version_file(&room, 6, "b.txt").await.as_deref(),
        Some("kept")
    );
}

async fn versions_survive_kill_9(backend: Backend) {
    let db = Database::new(backend);
    let mut server = Server::start(&db, &NO_INTERVAL).await;
    let room = server.create_room_with(&[("a.txt", "start\n")]).await;
    let ann = YClient::join(&server.ws_url(&room)).await;
    ann.set_presence(json!({"user": {"name": "Ann"}}));
    ann.append("a.txt", "kept\n");
    wait_server_text(&server, &room, "a.txt", "start\nkept\n").await;
    server.take_version(&room, "mine").await;

    // Written to the store, but not in a version yet, when the server dies.
    ann.append("a.txt", "flushed\n");
    wait_server_text(&server, &room, "a.txt", "start\nkept\nflushed\n").await;
    duet_e2e::eventually(5 * SECOND, "the flush", || async {
        (server.metric("duet_rooms_unflushed").await == 0).then_some(())
    })
    .await;
    server.kill9();
    drop(ann);
    server.restart().await;

    // The labelled version is there; the edits written before the crash get theirs.
    let versions = duet_e2e::eventually(10 * SECOND, "the version after the crash", || async {
        let versions = server.versions(&room).await;
        (versions.len() == 2).then_some(versions)
    })
    .await;
    assert_eq!(versions[1]["label"], json!("mine"));
    assert_eq!(versions[0]["authors"], json!(["Ann"]), "{versions:?}");
    assert_eq!(
        server.version_file(&room, 1, "a.txt").await.as_deref(),
        Some("start\nkept\n")
    );
    assert_eq!(
        server.version_file(&room, 2, "a.txt").await.as_deref(),
        Some("start\nkept\nflushed\n")
    );
}

/// A 20 KB file edited a little between versions: each version stores a patch of a few bytes,
/// every version reads back exactly (through chains of patches longer than the limit between
/// whole texts), restores from any of them work, and pruning keeps the versions left readable.
async fn small_edits_to_a_large_file_are_stored_as_patches(backend: Backend) {
    let db = Database::new(backend);
    let args = [NO_INTERVAL.as_slice(), &["--keep-versions", "30"]].concat();
    let server = Server::start(&db, &args).await;
    let mut text: String = (0..500).map(|i| format!("line {i:03} é\n")).collect();
    let room = server.create_room_with(&[("big.txt", &text)]).await;
    let ann = YClient::join(&server.ws_url(&room)).await;
    server.take_version(&room, "v1").await;
    let mut texts = vec![text.clone()];
    for i in 0..45 {
        let anchor = format!("line {:03} ", (i * 11) % 500);
        ann.insert_after("big.txt", &anchor, "+");
        let at = text.find(&anchor).unwrap() + anchor.len();
        text.insert(at, '+');
        wait_server_text(&server, &room, "big.txt", &text).await;
        server.take_version(&room, &format!("v{}", i + 2)).await;
        texts.push(text.clone());
    }
    // 46 versions, 30 kept: 17 to 46.
    assert_eq!(server.versions(&room).await.len(), 30);
    for (i, expected) in texts.iter().enumerate() {
        let id = i as i64 + 1;
        let stored = server.version_file(&room, id, "big.txt").await;
        if id < 17 {
            assert_eq!(stored, None, "version {id} is pruned");
        } else {
            assert_eq!(stored.as_deref(), Some(expected.as_str()), "version {id}");
        }
    }
    // Patches, not copies: far less than one 13 KB copy per version.
    let bytes: u64 = db
        .sql(&format!(
            "SELECT SUM(LENGTH(COALESCE(content, ''))) FROM room_version_files WHERE room_id = '{}'",
            room.id
        ))
        .trim()
        .parse()
        .unwrap();
    assert!(
        bytes < 3 * text.len() as u64,
        "{bytes} bytes of text stored for 30 versions of a {} byte file",
        text.len()
    );
    // A restore of an old version gives its text back exactly.
    let (status, reply) = server
        .call(
            Method::POST,
            &room,
            "/versions/20/restore",
            Some(json!({"paths": ["big.txt"]})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    ann.wait_text("big.txt", &texts[19], 5 * SECOND).await;
}
