//! The REST API of a real `duet-server`, every status code, on both stores.

use duet_e2e::on_both_backends;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use serde_json::{json, Value};

on_both_backends! {
    rooms_are_created_read_and_deleted => rooms_are_created_read_and_deleted;
    room_endpoints_check_ids_and_tokens => room_endpoints_check_ids_and_tokens;
    bad_room_bodies_are_refused_with_reasons => bad_room_bodies_are_refused_with_reasons;
}

async fn rooms_are_created_read_and_deleted(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &[]).await;
    let http = &server.http;

    let response = http
        .post(server.url("/rooms"))
        .json(&json!({"name": "demo", "files": {"main.py": "print(1)\n", "./src//lib.py": "x = '世界 🎉'\n"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    assert!(token.len() >= 32, "token has at least 128 bits");
    assert_eq!(
        created["ws_url"],
        json!(format!("ws://127.0.0.1:{}/ws/{id}", server.port))
    );
    assert_eq!(created["files"], json!(["main.py", "src/lib.py"]));

    let room = RoomRef {
        id: id.to_string(),
        token: token.to_string(),
    };
    let info = server.room_info(&room).await;
    assert_eq!(info["name"], "demo");
    assert_eq!(
        info["files"],
        json!([{"path": "main.py", "size": 9}, {"path": "src/lib.py", "size": "x = '世界 🎉'\n".len()}])
    );
    assert_eq!(info["peer_count"], 0);
    assert!(info["created_at"].as_i64().unwrap() > 1_700_000_000_000);

    // The token works as a query parameter too, and the file comes back as plain text.
    let file = http
        .get(server.url(&format!("/rooms/{id}/files/src/lib.py?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert!(file.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(file.text().await.unwrap(), "x = '世界 🎉'\n");
    let missing = http
        .get(server.url(&format!("/rooms/{id}/files/nope.py")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The prototypes' shape: one file named after the language.
    let legacy: Value = http
        .post(server.url("/rooms"))
        .json(&json!({"language": "python", "initial_code": "import os\n"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(legacy["files"], json!(["main.py"]));
    // No body at all: an empty room.
    let empty = http.post(server.url("/rooms")).send().await.unwrap();
    assert_eq!(empty.status(), 201);

    let delete = |t: &str| {
        http.delete(server.url(&format!("/rooms/{id}")))
            .bearer_auth(t.to_string())
            .send()
    };
    assert_eq!(delete("wrong").await.unwrap().status(), 403);
    assert_eq!(delete(token).await.unwrap().status(), 204);
    assert_eq!(delete(token).await.unwrap().status(), 404);

    // The token is shown once and never logged.
    assert!(
        !server.log().contains(token),
        "the token appears in the server log"
    );
}

async fn room_endpoints_check_ids_and_tokens(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[("a.txt", "hi")]).await;
    let http = &server.http;
    for path in [
        format!("/rooms/{}", room.id),
        format!("/rooms/{}/files/a.txt", room.id),
    ] {
        let url = server.url(&path);
        let none = http.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let body: Value = none.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"));
        assert_eq!(
            http.get(&url)
                .bearer_auth("nope")
                .send()
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            http.get(&url)
                .bearer_auth(&room.token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let unknown = uuid::Uuid::new_v4();
    let r = http
        .get(server.url(&format!("/rooms/{unknown}")))
        .bearer_auth(&room.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(server.url("/rooms/not-a-uuid"))
        .bearer_auth(&room.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("malformed room id"));
    // A path that tries to leave the workspace.
    let r = http
        .get(server.url(&format!("/rooms/{}/files/..%2F..%2Fetc%2Fpasswd", room.id)))
        .bearer_auth(&room.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The WebSocket upgrade is held to the same rules.
    use duet_e2e::yclient::{ConnectError, YClient};
    let ws = |q: String| async move { YClient::connect(&q).await.err() };
    let base = server.ws_base();
    assert!(matches!(
        ws(format!("{base}/{}", room.id)).await,
        Some(ConnectError::Http(401))
    ));
    assert!(matches!(
        ws(format!("{base}/{}?token=x", room.id)).await,
        Some(ConnectError::Http(403))
    ));
    assert!(matches!(
        ws(format!("{base}/{unknown}?token=x")).await,
        Some(ConnectError::Http(404))
    ));
    assert!(matches!(
        ws(format!("{base}/zzz?token=x")).await,
        Some(ConnectError::Http(400))
    ));
}

async fn bad_room_bodies_are_refused_with_reasons(backend: Backend) {
    let db = Database::new(backend);
    let server = Server::start(&db, &["--max-file-bytes", "64", "--max-files", "3"]).await;
    let cases = [
        (
            json!({"files": {"../evil": "x"}}).to_string(),
            400,
            "leaves the workspace",
        ),
        (
            json!({"files": {"/etc/passwd": "x"}}).to_string(),
            400,
            "absolute",
        ),
        (
            json!({"files": {"a\u{0}b": "x"}}).to_string(),
            400,
            "control",
        ),
        (
            json!({"files": {"a": "x", "./a": "y"}}).to_string(),
            400,
            "same path",
        ),
        (json!({"file": {}}).to_string(), 400, "unknown field"),
        ("{not json".to_string(), 400, "invalid JSON"),
        (
            json!({"files": {"big.txt": "x".repeat(65)}}).to_string(),
            413,
            "larger than 64 bytes",
        ),
        (
            json!({"files": {"1": "", "2": "", "3": "", "4": ""}}).to_string(),
            413,
            "too many files",
        ),
    ];
    for (body, status, reason) in cases {
        let response = server
            .http
            .post(server.url("/rooms"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "{body}: {message:?} should mention {reason:?}"
        );
    }
    // Invalid UTF-8 in a body is a 400 too, and the server carries on.
    let response = server
        .http
        .post(server.url("/rooms"))
        .body(vec![0xff, 0xfe, b'{'])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn health_metrics_docs_and_autocomplete_answer() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let http = &server.http;
    let get = |path: &str| http.get(server.url(path)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let ready: Value = get("/readyz").await.unwrap().json().await.unwrap();
    assert_eq!(ready, json!({"status": "ready", "store": "sqlite"}));
    server.create_room(json!({})).await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("# TYPE duet_rooms_created_total counter\nduet_rooms_created_total 1\n"),
        "{metrics}"
    );
    assert_eq!(get("/nope").await.unwrap().status(), 404);

    // The OpenAPI document lists every route the server answers.
    let spec: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    for path in [
        "/rooms",
        "/rooms/{id}",
        "/rooms/{id}/files/{path}",
        "/ws/{id}",
        "/autocomplete",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from /openapi.json"
        );
    }
    let docs = get("/docs").await.unwrap().text().await.unwrap();
    assert!(docs.contains("POST /rooms") && docs.contains("/ws/{id}"));

    let complete = |code: &str, cursor: usize, language: &str| {
        http.post(server.url("/autocomplete"))
            .json(&json!({"code": code, "cursorPosition": cursor, "language": language}))
            .send()
    };
    let result: Value = complete("imp", 3, "python")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["suggestions"][0]["insert_text"], "import os");
    let confidence = result["suggestions"][0]["confidence"].as_f64().unwrap();
    assert!(confidence > 0.0 && confidence <= 1.0);
    let result: Value = complete("x = 1\ndef hello", 15, "python")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let labels: Vec<&str> = result["suggestions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["insert_text"].as_str())
        .collect();
    assert!(labels.contains(&"def hello(self):"), "{labels:?}");
    // Out-of-range cursors and emoji do not upset it.
    assert_eq!(
        complete("🎉imp", 999, "python").await.unwrap().status(),
        200
    );
    let bad = http
        .post(server.url("/autocomplete"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
