//! A real `duet-server` process on a free loopback port, over SQLite or PostgreSQL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::tls::{Issued, TestCa};
use crate::{binary, eventually, free_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("duet-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where a server keeps its rooms: a fresh SQLite file, or the shared test PostgreSQL (rooms
/// have random ids, so tests sharing one database never see each other's rooms).
pub struct Database {
    pub backend: Backend,
    pub url: String,
    pub dir: TempDir,
}

impl Database {
    pub fn new(backend: Backend) -> Database {
        let dir = TempDir::new("db");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.0.join("duet.db").display()),
            Backend::Postgres => std::env::var("DUET_TEST_DATABASE_URL").expect(
                "DUET_TEST_DATABASE_URL is not set: run the tests with `tests/run`, which starts a throwaway PostgreSQL",
            ),
        };
        Database { backend, url, dir }
    }

    /// Runs SQL statements directly against the database (as an operator or a fault would,
    /// beside the server) and returns what they print: `psql -At` for PostgreSQL, Python's
    /// `sqlite3` for SQLite, one row a line, columns separated by `|`.
    pub fn sql(&self, sql: &str) -> String {
        let output = match self.backend {
            Backend::Postgres => Command::new(crate::pg::pg_bin().join("psql"))
                .args([self.url.as_str(), "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
                .output(),
            Backend::Sqlite => Command::new("python3")
                .arg("-c")
                .arg(
                    "import sqlite3, sys\n\
                     c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
                     sql = sys.argv[2]\n\
                     rows = c.execute(sql) if sql.lstrip().upper().startswith('SELECT') else c.executescript(sql)\n\
                     for row in rows:\n\
                     \x20   print('|'.join('' if v is None else str(v) for v in row))\n",
                )
                .arg(self.url.trim_start_matches("sqlite://"))
                .arg(sql)
                .output(),
        }
        .unwrap_or_else(|e| panic!("running SQL against {:?}: {e}", self.backend));
        assert!(
            output.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("SQL output is UTF-8")
    }

    pub fn with_url(backend: Backend, url: String) -> Database {
        Database {
            backend,
            url,
            dir: TempDir::new("db"),
        }
    }
}

/// A created room: its id and token.
#[derive(Debug, Clone)]
pub struct RoomRef {
    pub id: String,
    pub token: String,
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    database_url: String,
    args: Vec<String>,
    log: PathBuf,
    /// Serving HTTPS and WSS (see [`Server::start_tls`]).
    tls: bool,
    pub http: reqwest::Client,
}

impl Server {
    /// Starts a server with default limits plus `args`, and waits until it answers.
    pub async fn start(db: &Database, args: &[&str]) -> Server {
        Server::launch(db, args, reqwest::Client::new(), false).await
    }

    /// Starts a server that serves HTTPS and WSS with `issued` (its certificate must name
    /// 127.0.0.1); [`Server::http`] trusts `ca`.
    pub async fn start_tls(db: &Database, args: &[&str], ca: &TestCa, issued: &Issued) -> Server {
        let http = reqwest::Client::builder()
            .add_root_certificate(ca.root())
            .build()
            .expect("HTTPS client");
        let (cert, key) = (
            issued.cert.display().to_string(),
            issued.key.display().to_string(),
        );
        let tls_args = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        Server::launch(db, &[args, &tls_args].concat(), http, true).await
    }

    async fn launch(db: &Database, args: &[&str], http: reqwest::Client, tls: bool) -> Server {
        let mut server = Server {
            child: None,
            port: free_port(),
            database_url: db.url.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            log: db
                .dir
                .0
                .join(format!("server-{}.log", uuid::Uuid::new_v4())),
            http,
            tls,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(binary("duet-server"))
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.args)
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "info,duet_server=debug,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start duet-server");
        self.child = Some(child);
        let url = self.url("/healthz");
        let http = self.http.clone();
        eventually(
            // It waits for its database: a restart may come while the database is down.
            Duration::from_secs(90),
            "duet-server to answer /healthz",
            || {
                let (url, http) = (url.clone(), http.clone());
                async move {
                    http.get(url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// The WebSocket base the Yjs provider takes: rooms are `<base>/<id>`.
    pub fn ws_base(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}/ws", self.port)
    }

    pub fn ws_url(&self, room: &RoomRef) -> String {
        format!("{}/{}?token={}", self.ws_base(), room.id, room.token)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn create_room(&self, body: Value) -> RoomRef {
        let response = self
            .http
            .post(self.url("/rooms"))
            .json(&body)
            .send()
            .await
            .expect("POST /rooms");
        assert_eq!(response.status(), 201, "POST /rooms");
        let v: Value = response.json().await.expect("json");
        RoomRef {
            id: v["id"].as_str().expect("id").to_string(),
            token: v["token"].as_str().expect("token").to_string(),
        }
    }

    pub async fn create_room_with(&self, files: &[(&str, &str)]) -> RoomRef {
        let files: serde_json::Map<String, Value> = files
            .iter()
            .map(|(p, t)| (p.to_string(), json!(t)))
            .collect();
        self.create_room(json!({ "files": files })).await
    }

    /// A file's text as the server has it (`None` on 404).
    pub async fn file(&self, room: &RoomRef, path: &str) -> Option<String> {
        let response = self
            .http
            .get(self.url(&format!("/rooms/{}/files/{path}", room.id)))
            .bearer_auth(&room.token)
            .send()
            .await
            .expect("GET file");
        if response.status() == 404 {
            return None;
        }
        assert_eq!(response.status(), 200, "GET file");
        Some(response.text().await.expect("text"))
    }

    pub async fn room_info(&self, room: &RoomRef) -> Value {
        self.http
            .get(self.url(&format!("/rooms/{}", room.id)))
            .bearer_auth(&room.token)
            .send()
            .await
            .expect("GET room")
            .json()
            .await
            .expect("json")
    }

    /// A REST call on a room's endpoint (`path` after `/rooms/{id}`) with its token: the
    /// status and the body (JSON, or the text as a JSON string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        room: &RoomRef,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.url(&format!("/rooms/{}{path}", room.id)))
            .bearer_auth(&room.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("REST call");
        let status = response.status().as_u16();
        let json = response
            .headers()
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        let text = response.text().await.expect("body");
        let body = if json {
            serde_json::from_str(&text).expect("JSON body")
        } else {
            Value::String(text)
        };
        (status, body)
    }

    /// The room's versions, newest first (the first page).
    pub async fn versions(&self, room: &RoomRef) -> Vec<Value> {
        let (status, body) = self
            .call(reqwest::Method::GET, room, "/versions", None)
            .await;
        assert_eq!(status, 200, "GET versions: {body}");
        body["versions"].as_array().expect("versions").clone()
    }

    /// Takes a version on request; returns it.
    pub async fn take_version(&self, room: &RoomRef, label: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                room,
                "/versions",
                Some(json!({ "label": label })),
            )
            .await;
        assert_eq!(status, 201, "POST versions: {body}");
        body
    }

    /// A file's text at a version (`None` on 404).
    pub async fn version_file(&self, room: &RoomRef, version: i64, path: &str) -> Option<String> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                room,
                &format!("/versions/{version}/files/{path}"),
                None,
            )
            .await;
        match status {
            200 => Some(body.as_str().expect("text").to_string()),
            404 => None,
            _ => panic!("GET version file: {status} {body}"),
        }
    }

    /// One figure from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        let text = text.text().await.expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    /// SIGHUP: a TLS server reads its certificate and key again.
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("kill -HUP");
        assert!(status.success(), "kill -HUP {}", self.pid());
    }

    /// SIGKILL: nothing gets flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns whether it exited successfully.
    pub async fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join");
        status.map(|s| s.success()).unwrap_or(false)
    }

    /// Starts the server again on the same port and database.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
