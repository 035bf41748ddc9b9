//! The HTTP surface: the REST API, the WebSocket upgrade, health, metrics and the API docs.
//!
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it is. Every room
//! endpoint needs the room's token, as `Authorization: Bearer <token>` or `?token=<token>`.
//! A room's versions are under `/rooms/{id}/versions` (see [`crate::history`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::auth;
use crate::autocomplete::{Engine, IdentifierIndex};
use crate::gate::Refused;
use crate::paths;
use crate::proxy::{self, ClientAddr, Edge, WsBase};
use crate::room::{RoomMeta, ANONYMOUS};
use crate::rooms::{NewRoom, NewRoomError, Rooms, RoomsError};
use crate::ws;

/// Bytes read from a WebSocket at a time (per connection).
const READ_BUFFER_BYTES: usize = 8 * 1024;

const OPENAPI: &str = include_str!("openapi.json");
const API_PAGE: &str = include_str!("api.html");

#[derive(Clone)]
pub struct AppState {
    pub rooms: Rooms,
    pub autocomplete: Arc<Engine>,
    pub shutdown: watch::Receiver<bool>,
    /// How clients reach the server (proxies, public URL).
    pub edge: Arc<Edge>,
}

pub fn router(state: AppState) -> Router {
    // Bodies as large as the limits they are checked against: a room's files as JSON, whose
    // escapes can take up to twice the text (more only for control characters), and one file
    // for completion.
    let limits = state.rooms.limits();
    let room_body = limits.max_room_bytes.saturating_mul(2) + (1 << 20);
    let file_body = limits.max_file_bytes.saturating_mul(2) + (64 << 10);
    Router::new()
        .route("/", get(|| async { Html(API_PAGE) }))
        .route("/docs", get(|| async { Html(API_PAGE) }))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/rooms",
            post(create_room).layer(DefaultBodyLimit::max(room_body)),
        )
        .route("/rooms/{id}", get(room_info).delete(delete_room))
        .route("/rooms/{id}/files/{*path}", get(file_text))
        .route(
            "/rooms/{id}/versions",
            get(list_versions).post(create_version),
        )
        .route("/rooms/{id}/versions/{version}", get(version_info))
        .route(
            "/rooms/{id}/versions/{version}/files/{*path}",
            get(version_file),
        )
        .route("/rooms/{id}/versions/{version}/restore", post(restore))
        .route(
            "/autocomplete",
            post(autocomplete).layer(DefaultBodyLimit::max(file_body)),
        )
        .route("/ws/{id}", get(websocket))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /docs") })
        .layer(middleware::from_fn_with_state(
            state.edge.clone(),
            proxy::identify,
        ))
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}

/// Every error is JSON, including the ones axum's extractors answer on their own (a body past
/// its limit, a malformed query or path, a plain GET on the WebSocket endpoint, a wrong
/// method): their text becomes `{"error": ...}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        text => text.to_string(),
    };
    let mut error = ApiError::new(status, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            error.headers_mut().insert(name, value.clone());
        }
    }
    error
}

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// For 429: when to try again.
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.max(1).into());
        }
        response
    }
}

impl From<RoomsError> for ApiError {
    fn from(e: RoomsError) -> Self {
        match e {
            RoomsError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "no such room"),
            RoomsError::Store(e) => {
                tracing::warn!(error = %e, "store unavailable for a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable; try again shortly",
                )
            }
            RoomsError::NoVersion => {
                ApiError::new(StatusCode::NOT_FOUND, "no such version in this room")
            }
            RoomsError::NoFileInVersion(path) => ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no file {path:?} in this version"),
            ),
            RoomsError::TooLarge(e) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e),
            RoomsError::Invalid(e @ (NewRoomError::Path(..) | NewRoomError::SamePath)) => {
                ApiError::bad_request(e.to_string())
            }
            RoomsError::Invalid(e) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            RoomsError::Corrupt(e) => {
                tracing::error!(error = %e, "room state is corrupt");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the room's stored state is corrupt",
                )
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// A room id in its one spelling: a lowercase, hyphenated UUID, as `POST /rooms` answers it.
/// (`Uuid::parse_str` also takes upper case, braces, `urn:uuid:` and no hyphens: several
/// names for one room.)
fn parse_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id)
        .ok()
        .filter(|uuid| uuid.hyphenated().to_string() == id)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "malformed room id {id:?}: expected a lowercase hyphenated UUID, as POST /rooms answers it"
            ))
        })
}

/// Finds the room and checks the caller's token against it.
async fn authorize(
    rooms: &Rooms,
    id: &str,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> ApiResult<RoomMeta> {
    let id = parse_id(id)?;
    let meta = rooms.meta(id).await?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer.or(query.token.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this room needs its token: send `Authorization: Bearer <token>` or `?token=<token>`",
        ));
    };
    if !auth::token_matches(token.trim(), &meta.token_hash) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong token for this room",
        ));
    }
    Ok(meta)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: Option<String>,
    language: Option<String>,
    files: Option<BTreeMap<String, String>>,
    /// The web prototypes' shape: one file, named after the language.
    initial_code: Option<String>,
}

/// Longest room name and language accepted, in bytes: labels to show, not documents.
const MAX_NAME_BYTES: usize = 200;
const MAX_LANGUAGE_BYTES: usize = 64;

/// A room's name or language, a version's label: short, one line, no control characters.
fn check_label(what: &str, value: Option<&str>, max: usize) -> ApiResult<()> {
    let Some(value) = value else { return Ok(()) };
    if value.len() > max {
        return Err(ApiError::bad_request(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

/// The file name a prototype's single `initial_code` gets.
fn main_file_for(language: Option<&str>) -> &'static str {
    match language.map(str::to_ascii_lowercase).as_deref() {
        Some("python" | "py") => "main.py",
        Some("javascript" | "js") => "main.js",
        Some("typescript" | "ts") => "main.ts",
        Some("rust" | "rs") => "main.rs",
        Some("go") => "main.go",
        Some("java") => "Main.java",
        Some("c") => "main.c",
        Some("cpp" | "c++") => "main.cpp",
        Some("ruby" | "rb") => "main.rb",
        _ => "main.txt",
    }
}

/// The creation secret and the client's rate: checked before anything else.
fn admit(app: &AppState, client: ClientAddr, headers: &HeaderMap) -> ApiResult<()> {
    let secret = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match app.rooms.gate().admit(client.0, secret) {
        Ok(()) => Ok(()),
        Err(Refused::Unauthorized) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server creates rooms only for those who have its creation secret: send `Authorization: Bearer <secret>` (the bridge: `create_token` in .duet.toml or DUET_CREATE_TOKEN)",
        )),
        Err(Refused::Forbidden) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong creation secret",
        )),
        Err(Refused::TooMany(wait)) => {
            tracing::info!(client = %client, "room creation refused: rate limit");
            Err(ApiError {
                retry_after: Some(wait),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many rooms created from your address (the limit is {} a minute); try again in {} s",
                        app.rooms.limits().max_rooms_per_minute,
                        wait.as_secs() + 1
                    ),
                )
            })
        }
    }
}

async fn create_room(
    State(app): State<AppState>,
    Extension(base): Extension<WsBase>,
    Extension(client): Extension<ClientAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    admit(&app, client, &headers)?;
    let request: CreateRoom = json_body(&body)?;
    check_label("the room's name", request.name.as_deref(), MAX_NAME_BYTES)?;
    check_label(
        "the room's language",
        request.language.as_deref(),
        MAX_LANGUAGE_BYTES,
    )?;
    let mut files: Vec<(String, String)> = request.files.unwrap_or_default().into_iter().collect();
    if let Some(code) = request.initial_code {
        files.push((main_file_for(request.language.as_deref()).to_string(), code));
    }
    let new = NewRoom {
        name: request.name,
        language: request.language,
        files,
    };
    let (meta, token, paths) = app.rooms.create(new).await?;
    let ws_url = format!("{}/{}", base.0, meta.id);
    tracing::info!(room = %meta.id, files = paths.len(), "room created");
    let body = json!({
        "id": meta.id,
        "token": token,
        "ws_url": ws_url,
        "invite": format!("{ws_url}?token={token}"),
        "name": meta.name,
        "language": meta.language,
        "files": paths,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn room_info(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let meta = authorize(&app.rooms, &id, &headers, &query).await?;
    let info = app.rooms.info(&meta).await?;
    let connections = app.rooms.peer_count(meta.id).await;
    Ok(Json(json!({
        "id": meta.id,
        "name": meta.name,
        "language": meta.language,
        "files": info.files,
        "peers": info.peers,
        "peer_count": connections,
        "created_at": meta.created_at,
        "updated_at": info.updated_at,
    })))
}

async fn file_text(
    State(app): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let meta = authorize(&app.rooms, &id, &headers, &query).await?;
    let path =
        paths::normalize(&path).map_err(|e| ApiError::bad_request(format!("file path: {e}")))?;
    let text = app.rooms.file_text(meta.id, &path).await?;
    let text = text.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no file {path:?} in this room"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Versions listed per page when the request does not say, and at most.
const VERSIONS_PER_PAGE: i64 = 50;
const MAX_VERSIONS_PER_PAGE: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionsQuery {
    token: Option<String>,
    limit: Option<i64>,
    /// Versions older than this one (the previous page's `next_before`).
    before: Option<i64>,
}

async fn list_versions(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<VersionsQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let token = TokenQuery {
        token: query.token.clone(),
    };
    let meta = authorize(&app.rooms, &id, &headers, &token).await?;
    let limit = query.limit.unwrap_or(VERSIONS_PER_PAGE);
    if !(1..=MAX_VERSIONS_PER_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_VERSIONS_PER_PAGE}"
        )));
    }
    // One more than asked for says whether there is a next page.
    let mut versions = app
        .rooms
        .store()
        .versions(meta.id, query.before, limit + 1)
        .await
        .map_err(RoomsError::from)?;
    let more = versions.len() as i64 > limit;
    versions.truncate(limit as usize);
    let next_before = more.then(|| versions.last().map(|v| v.id)).flatten();
    Ok(Json(
        json!({"versions": versions, "next_before": next_before}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    label: Option<String>,
}

/// Longest version label accepted, in bytes.
const MAX_VERSION_LABEL_BYTES: usize = 200;

async fn create_version(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let meta = authorize(&app.rooms, &id, &headers, &query).await?;
    let request: NewVersion = json_body(&body)?;
    let label = request
        .label
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    check_label("the version's label", label, MAX_VERSION_LABEL_BYTES)?;
    let version = app.rooms.take_version(meta.id, label).await?;
    Ok((StatusCode::CREATED, Json(version)).into_response())
}

/// A JSON body, or the default when it is empty.
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A version number: a positive integer, as the version list gives it.
fn parse_version(version: &str) -> ApiResult<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0 && v.to_string() == version)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "malformed version {version:?}: expected a version id, as GET /rooms/{{id}}/versions lists them"
            ))
        })
}

/// One version, with the paths of every file it has (`paths`, sorted): what a restore of all
/// of it gives the room.
async fn version_info(
    State(app): State<AppState>,
    Path((id, version)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let meta = authorize(&app.rooms, &id, &headers, &query).await?;
    let version = parse_version(&version)?;
    let store = app.rooms.store();
    let found = store
        .version(meta.id, version)
        .await
        .map_err(RoomsError::from)?
        .ok_or(RoomsError::NoVersion)?;
    let paths: Vec<String> = store
        .version_files(meta.id, version)
        .await
        .map_err(RoomsError::from)?
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    let mut answer = json!(found);
    answer["paths"] = json!(paths);
    Ok(Json(answer))
}

async fn version_file(
    State(app): State<AppState>,
    Path((id, version, path)): Path<(String, String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let meta = authorize(&app.rooms, &id, &headers, &query).await?;
    let version = parse_version(&version)?;
    let path =
        paths::normalize(&path).map_err(|e| ApiError::bad_request(format!("file path: {e}")))?;
    let store = app.rooms.store();
    if store
        .version(meta.id, version)
        .await
        .map_err(RoomsError::from)?
        .is_none()
    {
        return Err(RoomsError::NoVersion.into());
    }
    let text = store
        .version_text(meta.id, version, &path)
        .await
        .map_err(RoomsError::from)?
        .ok_or(RoomsError::NoFileInVersion(path))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    /// The files to restore; all of them when absent.
    paths: Option<Vec<String>>,
    /// Who restores (shown as an author of the next version).
    author: Option<String>,
}

async fn restore(
    State(app): State<AppState>,
    Path((id, version)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let meta = authorize(&app.rooms, &id, &headers, &query).await?;
    let version = parse_version(&version)?;
    let request: RestoreRequest = json_body(&body)?;
    let paths = match request.paths {
        Some(paths) if paths.is_empty() => {
            return Err(ApiError::bad_request(
                "paths is empty: leave it out to restore every file",
            ))
        }
        Some(paths) => {
            let mut normal = Vec::with_capacity(paths.len());
            for path in paths {
                normal.push(
                    paths::normalize(&path)
                        .map_err(|e| ApiError::bad_request(format!("file {path:?}: {e}")))?,
                );
            }
            normal.sort();
            normal.dedup();
            Some(normal)
        }
        None => None,
    };
    let author = request
        .author
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    check_label("the author", author, MAX_NAME_BYTES)?;
    let (before, restored) = app
        .rooms
        .restore(meta.id, version, paths, author.unwrap_or(ANONYMOUS))
        .await?;
    Ok(Json(json!({"restored": restored, "before": before})))
}

async fn delete_room(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let meta = authorize(&app.rooms, &id, &headers, &query).await?;
    app.rooms.delete(meta.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn websocket(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let meta = authorize(&app.rooms, &id, &headers, &query)
        .await
        .inspect_err(|_| {
            crate::metrics::Metrics::inc(&app.rooms.metrics().connections_rejected);
        })?;
    let room = app.rooms.get(meta.id).await?;
    let rooms = app.rooms.clone();
    let shutdown = app.shutdown.clone();
    let max = rooms.limits().max_message_bytes;
    // Frames up to twice the limit are read so that the connection can be closed with a clear
    // reason; anything larger is cut off by the WebSocket layer itself.
    // The read buffer is allocated in full for every connection: the default 128 KiB made
    // up nearly all of a peer's memory on the server (bench-room), while sync messages are
    // small; larger frames are simply read in more steps.
    Ok(upgrade
        .max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2))
        .read_buffer_size(READ_BUFFER_BYTES)
        // The connection's logs keep naming its client (the request's span).
        .on_upgrade(move |socket| {
            ws::serve(socket, room, rooms, shutdown).instrument(tracing::Span::current())
        }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AutocompleteRequest {
    code: String,
    cursor_position: Option<usize>,
    language: String,
}

async fn autocomplete(
    State(app): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let request: AutocompleteRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let cursor = request.cursor_position.unwrap_or(usize::MAX);
    // Identifiers of the submitted code, as the prototypes offered them: one pass over it.
    let identifiers = IdentifierIndex::from_text(&request.code);
    let suggestions = app.autocomplete.complete_in_text(
        &request.language,
        &request.code,
        cursor,
        Some(&identifiers),
    );
    Ok(Json(json!({"suggestions": suggestions})))
}

async fn readyz(State(app): State<AppState>) -> Response {
    let reachable = matches!(
        tokio::time::timeout(Duration::from_secs(2), app.rooms.store().ping()).await,
        Ok(Ok(()))
    );
    let backend = format!("{:?}", app.rooms.store().backend()).to_lowercase();
    let store_ready = reachable && !app.rooms.degraded();
    // With several nodes: whether this one reaches the others through Redis.
    let relay = app.rooms.relay().map(|relay| relay.healthy());
    let mut body = json!({"store": backend});
    if let Some(healthy) = relay {
        body["relay"] = json!(if healthy { "connected" } else { "unreachable" });
    }
    if store_ready && relay != Some(false) {
        body["status"] = json!("ready");
        Json(body).into_response()
    } else {
        body["status"] = json!("degraded");
        body["error"] = json!(if store_ready {
            "Redis is unreachable; this node keeps serving its own peers, and syncs with the other nodes when it is back"
        } else {
            "the database is unreachable; edits keep flowing and are written when it is back"
        });
        body["rooms_unflushed"] = json!(app.rooms.unflushed_count());
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let rooms = &app.rooms;
    let text = rooms.metrics().render(
        rooms.loaded_count(),
        rooms.unflushed_count(),
        rooms.degraded(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
