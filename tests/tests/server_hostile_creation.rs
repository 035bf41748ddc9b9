//! Room creation on a server anyone can reach: each client has a rate (429 with
//! `Retry-After` past it, other clients unaffected), an optional creation secret keeps
//! creation to those who have it (the bridge sends it), and labels, ids and paths have one
//! clear form.

use duet_e2e::editor::{FakeEditor, Kind};
use duet_e2e::server::{Backend, Database, Server};
use serde_json::{json, Value};

async fn post_room(
    server: &Server,
    client: &str,
    secret: Option<&str>,
    body: Value,
) -> (u16, Option<String>, Value) {
    let mut request = server
        .http
        .post(server.url("/rooms"))
        .header("x-forwarded-for", client)
        .json(&body);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.expect("POST /rooms");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, response.json().await.expect("a JSON body"))
}

/// Before, one client created 67 rooms a second for as long as it liked. Now it gets its
/// minute's share, then 429 with `Retry-After`; nothing more is stored; others still create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_creation_is_rate_limited_per_client() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(
        &db,
        &[
            "--max-rooms-per-minute",
            "5",
            "--trusted-proxy",
            "127.0.0.1",
        ],
    )
    .await;
    let stored = || {
        db.sql("SELECT COUNT(*) FROM rooms")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    for _ in 0..5 {
        let (status, _, body) = post_room(&server, "192.0.2.1", None, json!({})).await;
        assert_eq!(status, 201, "{body}");
    }
    for _ in 0..50 {
        let (status, retry, body) = post_room(
            &server,
            "192.0.2.1",
            None,
            json!({"files": {"a.txt": "x".repeat(100_000)}}),
        )
        .await;
        assert_eq!(status, 429, "{body}");
        let seconds: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!((1..=12).contains(&seconds), "Retry-After: {seconds}");
        assert!(
            body["error"].as_str().unwrap().contains("too many rooms"),
            "{body}"
        );
    }
    assert_eq!(stored(), 5);
    // Another client is not affected.
    let (status, _, _) = post_room(&server, "192.0.2.2", None, json!({})).await;
    assert_eq!(status, 201);
    assert_eq!(stored(), 6);
}

/// With `--create-token`, only requests bearing it create rooms; the bridge's
/// `duet.createRoom` sends it when configured (`DUET_CREATE_TOKEN`, `.duet.toml`'s
/// `create_token`, or `createToken` in `initializationOptions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_secret_keeps_creation_to_those_who_have_it() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &["--create-token", "s3cret"]).await;
    let (status, _, body) = post_room(&server, "192.0.2.1", None, json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("creation secret"),
        "{body}"
    );
    let (status, _, body) = post_room(&server, "192.0.2.1", Some("guess"), json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("wrong creation secret"))
    );
    let (status, _, body) = post_room(&server, "192.0.2.1", Some("s3cret"), json!({})).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        !server.log().contains("s3cret"),
        "the secret reached the log"
    );

    let with_secret = FakeEditor::builder(Kind::VsCode)
        .env("DUET_CREATE_TOKEN", "s3cret")
        .start()
        .await;
    with_secret.open("main.py", "print(1)\n");
    let result = with_secret
        .execute_command("duet.createRoom", json!([server.url("")]))
        .await
        .unwrap_or_else(|e| panic!("duet.createRoom failed: {e}\n{}", with_secret.report()));
    assert!(result.to_string().contains("token="), "{result}");
    let without = FakeEditor::builder(Kind::VsCode).start().await;
    let error = without
        .execute_command("duet.createRoom", json!([server.url("")]))
        .await
        .expect_err("no room without the secret");
    assert!(error.to_string().contains("creation secret"), "{error}");
}

/// One spelling per room id, short labels, file names without invisible characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_labels_and_paths_have_one_clear_form() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room(json!({})).await;
    let spellings = [
        room.id.to_uppercase(),
        room.id.replace('-', ""),
        format!("{{{}}}", room.id),
        format!("urn:uuid:{}", room.id),
    ];
    for id in spellings {
        let response = server
            .http
            .get(server.url(&format!("/rooms/{id}")))
            .bearer_auth(&room.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{id}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("lowercase hyphenated"),
            "{body}"
        );
    }
    let refused = [
        json!({"name": "n".repeat(1_000_000)}),
        json!({"name": "two\nlines"}),
        json!({"language": "l".repeat(65)}),
        json!({"files": {"invoice\u{202E}txt.exe": ""}}),
        json!({"files": {"a\u{200B}.txt": ""}}),
    ];
    for body in refused {
        let (status, _, answer) = post_room(&server, "127.0.0.1", None, body.clone()).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, _, _) = post_room(&server, "127.0.0.1", None, json!({"name": "ann's room"})).await;
    assert_eq!(status, 201);
}
