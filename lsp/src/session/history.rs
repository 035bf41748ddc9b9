//! The room's history, for the editors: its versions (`duet.versions`, a readable list in
//! Helix), a file at a version (`duet.versionText`, for diffs), a version on request
//! (`duet.saveVersion`), all through the server's REST API with the invite's token in a header;
//! restores (`duet.restore`): the version's texts are read and a version of what is there now
//! is taken over REST, then the restore is made on the replica as the user's own edit, which
//! every peer receives and the user's undo takes back; and "while you were away": leaving a
//! room remembers its texts (per workspace and room, under the user's state directory), and
//! coming back to it tells which files changed since and who changed them (`duet/away`,
//! `duet.away`, `duet.awayText` for the diff).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use duet_server::clock::now_ms;
use duet_server::digest::sha256_hex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tower_lsp::lsp_types::MessageType;

use super::{CommandResult, Event, Session, ToEditor};
use crate::config::Invite;
use crate::tls;

/// How long a REST call of the history may take.
const REST_TIMEOUT: Duration = Duration::from_secs(15);

/// Versions `duet.versions` lists when not told how many.
const LISTED: u64 = 20;

/// A version's texts, read for a restore.
#[derive(Debug)]
pub struct Fetched {
    version: i64,
    /// The version taken just before, of what the restore replaces.
    before: Value,
    /// Each file to restore with its text then.
    wanted: Vec<(String, Option<String>)>,
    /// A restore of all of the version: files it did not have are removed.
    all: bool,
}

/// What a bridge remembers of a room it left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LeftRoom {
    /// When (Unix milliseconds).
    left_at: i64,
    /// Every file's text then.
    files: BTreeMap<String, String>,
}

/// What changed in a room while the user was away.
#[derive(Debug, Clone, Default)]
pub(super) struct Away {
    since: i64,
    /// Each changed file, with its text when the user left (`None`: it did not exist).
    files: BTreeMap<String, Option<String>>,
    change: BTreeMap<String, &'static str>,
}

/// The server's REST API for the room we are in.
struct Rest {
    http: reqwest::Client,
    room: String,
    token: String,
}

impl Rest {
    fn new(invite: &Invite, ca: Option<&std::path::Path>) -> Result<Rest, String> {
        Ok(Rest {
            http: http_client(&invite.server, ca)?,
            room: format!("{}/rooms/{}", invite.server, invite.room),
            token: invite.token.clone(),
        })
    }

    /// A call on the room (`path` after `/rooms/{id}`): the JSON answer, or the server's error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> CommandResult {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.room))
            .bearer_auth(&self.token)
            .timeout(REST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("duet: the server is not reachable: {e}"))?;
        let status = response.status();
        let json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        let text = response
            .text()
            .await
            .map_err(|e| format!("duet: no answer from the server: {e}"))?;
        if !status.is_success() {
            let error: Value = serde_json::from_str(&text).unwrap_or_default();
            let reason = error["error"].as_str().unwrap_or(text.as_str()).to_string();
            return Err(format!("duet: the server answered {status}: {reason}"));
        }
        Ok(Some(if json {
            serde_json::from_str(&text).map_err(|e| format!("duet: unexpected answer: {e}"))?
        } else {
            Value::String(text)
        }))
    }

    /// A file's text at a version (the server answers 404 when the version lacks it).
    async fn version_text(&self, version: i64, path: &str) -> Result<Option<String>, String> {
        let path = encode_path(path);
        let text = self
            .call(
                reqwest::Method::GET,
                &format!("/versions/{version}/files/{path}"),
                None,
            )
            .await?;
        Ok(text.as_ref().and_then(Value::as_str).map(str::to_string))
    }
}

/// An HTTP client for `server` (`http://…` or `https://…`, trusting `ca` besides the system's).
pub(super) fn http_client(
    server: &str,
    ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    if server.starts_with("https://") {
        tls::http_client(tls::client_config(ca)?)
    } else {
        Ok(reqwest::Client::new())
    }
}

impl Session {
    /// The history's commands; `None` for a command that is not one of them.
    pub(super) fn history_command(
        &mut self,
        command: &str,
        arguments: &[Value],
        reply: oneshot::Sender<CommandResult>,
    ) -> Option<oneshot::Sender<CommandResult>> {
        let local = match command {
            "duet.away" => self.away_report(),
            "duet.awayText" => self.away_text(arguments),
            "duet.versions" | "duet.versionText" | "duet.saveVersion" | "duet.restore" => {
                self.rest_command(command, arguments, reply);
                return None;
            }
            _ => return Some(reply),
        };
        if let Err(e) = &local {
            self.show(MessageType::ERROR, e.clone());
        }
        let _ = reply.send(local);
        None
    }

    /// A command answered by the server: the call runs on its own task, which answers the
    /// command and tells the editor.
    fn rest_command(
        &mut self,
        command: &str,
        arguments: &[Value],
        reply: oneshot::Sender<CommandResult>,
    ) {
        let prepared = self.rest().and_then(|rest| {
            let call = Call::parse(command, arguments)?;
            Ok((rest, call))
        });
        let (rest, call) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                self.show(MessageType::ERROR, e.clone());
                let _ = reply.send(Err(e));
                return;
            }
        };
        let editor = self.editor.clone();
        let helix = self.helix;
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = call.run(&rest, &editor, &events, helix).await;
            if let Err(e) = &result {
                let _ = editor.send(ToEditor::Show {
                    kind: MessageType::ERROR,
                    message: e.clone(),
                });
            }
            let _ = reply.send(result);
        });
    }

    /// Applies a restore whose texts were fetched: the user's own edit of the room, sent to
    /// every peer and handed to the open documents like a peer's.
    pub(super) fn restore(&mut self, fetched: Fetched, reply: oneshot::Sender<CommandResult>) {
        let Fetched {
            version,
            before,
            wanted,
            all,
        } = fetched;
        let Some(room) = self.room.as_mut() else {
            let _ = reply.send(Err("duet: not in a room any more: nothing restored".into()));
            return;
        };
        let (restored, frames) = room.replica.restore(&wanted, all);
        for frame in frames {
            room.connection.send(frame);
        }
        self.remote_changed();
        self.new_files();
        self.show(
            MessageType::INFO,
            match restored.is_empty() {
                true => format!("duet: nothing to restore: already as in version {version}"),
                false => format!(
                    "duet: restored {} from version {version} (undo takes it back; version {} \
                     holds what it replaced)",
                    restored.join(", "),
                    before["id"]
                ),
            },
        );
        let _ = reply.send(Ok(Some(
            json!({"restored": restored, "before": before, "version": version}),
        )));
    }

    fn rest(&self) -> Result<Rest, String> {
        let room = self
            .room
            .as_ref()
            .ok_or("duet: not in a room: join one to see its history")?;
        Rest::new(&room.invite, self.settings.ca.as_deref())
    }

    /// Remembers the room's texts as we leave it, for "while you were away".
    pub(super) fn remember_room(&self) {
        let Some(room) = self.room.as_ref().filter(|r| r.ever_synced) else {
            return;
        };
        let files = room
            .replica
            .paths()
            .into_iter()
            .filter_map(|path| Some((path.clone(), room.replica.text(&path)?)))
            .collect();
        let left = LeftRoom {
            left_at: now_ms(),
            files,
        };
        let file = self.left_room_file(&room.invite);
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&file, serde_json::to_vec(&left).unwrap_or_default()));
        if let Err(e) = written {
            tracing::warn!(error = %e, file = %file.display(), "cannot remember the room we left");
        }
    }

    /// Back in a room we left: what changed since, told to the editor (`duet/away` and a
    /// message), with who changed it from the server's versions.
    pub(super) fn welcome_back(&mut self) {
        let Some(room) = self.room.as_ref() else {
            return;
        };
        let file = self.left_room_file(&room.invite);
        let Some(left) = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LeftRoom>(&bytes).ok())
        else {
            return;
        };
        let mut away = Away {
            since: left.left_at,
            ..Away::default()
        };
        let paths: BTreeSet<String> = room
            .replica
            .paths()
            .into_iter()
            .chain(left.files.keys().cloned())
            .collect();
        for path in paths {
            let before = left.files.get(&path).cloned();
            let now = room.replica.text(&path);
            let change = match (&before, &now) {
                (Some(a), Some(b)) if a == b => continue,
                (None, None) => continue,
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (Some(_), Some(_)) => "changed",
            };
            away.change.insert(path.clone(), change);
            away.files.insert(path, before);
        }
        let report = away.report();
        let empty = away.files.is_empty();
        self.away = Some(away);
        if empty {
            return;
        }
        let Ok(rest) = self.rest() else { return };
        let me = self.user().name;
        let editor = self.editor.clone();
        let helix = self.helix;
        tokio::spawn(async move {
            // A version now holds what changed and names everyone who changed it since.
            let label = format!("{me} is back");
            let _ = rest
                .call(
                    reqwest::Method::POST,
                    "/versions",
                    Some(json!({"label": label})),
                )
                .await;
            let mut authors = BTreeSet::new();
            if let Ok(Some(page)) = rest
                .call(reqwest::Method::GET, "/versions?limit=500", None)
                .await
            {
                let versions = page["versions"].as_array().cloned().unwrap_or_default();
                for version in versions {
                    if version["created_at"].as_i64().unwrap_or(0) <= report.since {
                        break;
                    }
                    let names = version["authors"].as_array().cloned().unwrap_or_default();
                    authors.extend(
                        names
                            .iter()
                            .filter_map(Value::as_str)
                            .filter(|name| *name != me)
                            .map(str::to_string),
                    );
                }
            }
            let authors: Vec<String> = authors.into_iter().collect();
            let mut params = report.json();
            params["authors"] = json!(authors);
            let who = match authors.is_empty() {
                true => "someone".to_string(),
                false => authors.join(", "),
            };
            let message = format!(
                "duet: while you were away, {who} changed {}{}",
                report.summary(),
                if helix { " (duet.away lists them)" } else { "" }
            );
            let _ = editor.send(ToEditor::Away(params));
            let _ = editor.send(ToEditor::Show {
                kind: MessageType::INFO,
                message,
            });
        });
    }

    /// `duet.away`: what changed while we were away (in Helix, as a list to read).
    fn away_report(&self) -> CommandResult {
        let away = self
            .away
            .as_ref()
            .ok_or("duet: nothing to report: this room is new to this workspace")?;
        let report = away.report();
        if self.helix {
            let lines = report
                .files
                .iter()
                .map(|(path, change)| format!("{path} ({change})"))
                .collect();
            self.tell(ToEditor::Choose {
                message: format!(
                    "duet: changed while you were away (since {})",
                    time_of_day(report.since)
                ),
                actions: lines,
            });
        }
        Ok(Some(report.json()))
    }

    /// `duet.awayText <path>`: a file's text when we left (null: it did not exist then).
    fn away_text(&self, arguments: &[Value]) -> CommandResult {
        let path = arguments
            .first()
            .and_then(Value::as_str)
            .ok_or("duet.awayText needs a path")?;
        let away = self
            .away
            .as_ref()
            .ok_or("duet: nothing to report: this room is new to this workspace")?;
        match away.files.get(path) {
            Some(text) => Ok(Some(json!({"path": path, "text": text}))),
            None => Err(format!("duet: {path} did not change while you were away")),
        }
    }

    /// Where the texts of a room we left are kept: per workspace and room.
    fn left_room_file(&self, invite: &Invite) -> PathBuf {
        let key = format!("{}\n{}", self.workspace.root().display(), invite.room);
        let digest = &sha256_hex(&key)[..32];
        crate::workspace::state_dir()
            .join("duet/left")
            .join(format!("{digest}.json"))
    }
}

/// What `duet.away` answers and `duet/away` says.
struct Report {
    since: i64,
    files: Vec<(String, &'static str)>,
}

impl Away {
    fn report(&self) -> Report {
        Report {
            since: self.since,
            files: self
                .change
                .iter()
                .map(|(path, change)| (path.clone(), *change))
                .collect(),
        }
    }
}

impl Report {
    fn json(&self) -> Value {
        json!({
            "since": self.since,
            "files": self.files.iter().map(|(path, change)| json!({"path": path, "change": change})).collect::<Vec<_>>(),
        })
    }

    /// `a.py, b.py (added) and 3 more`.
    fn summary(&self) -> String {
        let mut named: Vec<String> = self
            .files
            .iter()
            .take(4)
            .map(|(path, change)| match *change {
                "changed" => path.clone(),
                other => format!("{path} ({other})"),
            })
            .collect();
        if self.files.len() > named.len() {
            named.push(format!("{} more", self.files.len() - named.len()));
        }
        named.join(", ")
    }
}

/// One REST command, its arguments checked.
enum Call {
    Versions { limit: u64 },
    VersionText { version: i64, path: String },
    Save { label: Option<String> },
    Restore { version: i64, path: Option<String> },
}

impl Call {
    fn parse(command: &str, arguments: &[Value]) -> Result<Call, String> {
        let version = || {
            let value = arguments.first();
            value
                .and_then(Value::as_i64)
                .or_else(|| value?.as_str()?.trim().trim_start_matches('#').parse().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    format!("{command} needs a version number (duet.versions lists them)")
                })
        };
        let text = |i: usize| arguments.get(i).and_then(Value::as_str).map(str::to_string);
        Ok(match command {
            "duet.versions" => Call::Versions {
                limit: arguments
                    .first()
                    .and_then(Value::as_u64)
                    .unwrap_or(LISTED)
                    .clamp(1, 500),
            },
            "duet.versionText" => Call::VersionText {
                version: version()?,
                path: text(1).ok_or("duet.versionText needs a version and a path")?,
            },
            "duet.saveVersion" => Call::Save { label: text(0) },
            _ => Call::Restore {
                version: version()?,
                path: text(1).filter(|p| !p.trim().is_empty()),
            },
        })
    }

    async fn run(
        self,
        rest: &Rest,
        editor: &mpsc::UnboundedSender<ToEditor>,
        events: &mpsc::UnboundedSender<Event>,
        helix: bool,
    ) -> CommandResult {
        use reqwest::Method;
        let tell = |message: String| {
            let _ = editor.send(ToEditor::Show {
                kind: MessageType::INFO,
                message,
            });
        };
        match self {
            Call::Versions { limit } => {
                let page = rest
                    .call(Method::GET, &format!("/versions?limit={limit}"), None)
                    .await?
                    .unwrap_or_default();
                if helix {
                    let versions = page["versions"].as_array().cloned().unwrap_or_default();
                    let _ = editor.send(ToEditor::Choose {
                        message: "duet: the room's versions, newest first; restore one with \
                                  duet.restore <version> [path]"
                            .into(),
                        actions: versions.iter().map(readable).collect(),
                    });
                }
                Ok(Some(page))
            }
            Call::VersionText { version, path } => {
                let text = rest.version_text(version, &path).await?;
                Ok(Some(
                    json!({"path": path, "version": version, "text": text}),
                ))
            }
            Call::Save { label } => {
                let version = rest
                    .call(Method::POST, "/versions", Some(json!({"label": label})))
                    .await?
                    .unwrap_or_default();
                tell(format!("duet: saved version {}", version["id"]));
                Ok(Some(version))
            }
            Call::Restore { version, path } => {
                // The session makes the restore on the replica, and answers.
                let fetched = fetch_restore(rest, version, path).await?;
                let (reply, answer) = oneshot::channel();
                let _ = events.send(Event::Restore(Box::new(fetched), reply));
                answer
                    .await
                    .map_err(|_| "duet: the bridge is stopping: nothing restored".to_string())?
            }
        }
    }
}

/// Reads the texts of `version` (of `path`, or of all its files), then takes a version of what
/// the room has now: what the restore will replace.
async fn fetch_restore(rest: &Rest, version: i64, path: Option<String>) -> Result<Fetched, String> {
    use reqwest::Method;
    let all = path.is_none();
    let paths = match path {
        Some(path) => vec![path],
        None => {
            let found = rest
                .call(Method::GET, &format!("/versions/{version}"), None)
                .await?
                .unwrap_or_default();
            found["paths"]
                .as_array()
                .map(|paths| {
                    paths
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        }
    };
    let mut wanted = Vec::with_capacity(paths.len());
    for path in paths {
        let text = rest.version_text(version, &path).await?;
        wanted.push((path, text));
    }
    let label = format!("before restoring version {version}");
    let before = rest
        .call(Method::POST, "/versions", Some(json!({"label": label})))
        .await?
        .unwrap_or_default();
    Ok(Fetched {
        version,
        before,
        wanted,
        all,
    })
}

/// `#12  23:41  Ann, Bob  main.py, notes.md (added)  "label"`.
fn readable(version: &Value) -> String {
    let files: Vec<String> = version["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .map(|f| {
                    let path = f["path"].as_str().unwrap_or("?");
                    match f["change"].as_str() {
                        Some("changed") | None => path.to_string(),
                        Some(change) => format!("{path} ({change})"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let authors: Vec<&str> = version["authors"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut line = format!(
        "#{}  {}  {}  {}",
        version["id"],
        time_of_day(version["created_at"].as_i64().unwrap_or(0)),
        if authors.is_empty() {
            "-".to_string()
        } else {
            authors.join(", ")
        },
        if files.is_empty() {
            "no change".to_string()
        } else {
            files.join(", ")
        }
    );
    if let Some(label) = version["label"].as_str() {
        line.push_str(&format!("  \"{label}\""));
    }
    line
}

/// `YYYY-MM-DD HH:MM UTC` of a time in Unix milliseconds.
fn time_of_day(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// A workspace path as a URL path: each segment percent-encoded.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_one_line_each() {
        let version = json!({"id": 12, "created_at": 1_796_686_011_139i64, "label": "before lunch",
            "authors": ["Ann", "Bob"], "files": [{"path": "main.py", "change": "changed"},
            {"path": "new.txt", "change": "added"}]});
        assert_eq!(
            readable(&version),
            "#12  2026-12-07 23:26 UTC  Ann, Bob  main.py, new.txt (added)  \"before lunch\""
        );
        assert_eq!(time_of_day(0), "1970-01-01 00:00 UTC");
        assert_eq!(time_of_day(951_782_400_000), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn paths_are_encoded_segment_by_segment() {
        assert_eq!(encode_path("src/a b/é.py"), "src/a%20b/%C3%A9.py");
        assert_eq!(encode_path("x?#%.txt"), "x%3F%23%25.txt");
    }

    #[test]
    fn versions_are_named_by_number_or_text() {
        let call = |args: Value| Call::parse("duet.restore", args.as_array().unwrap());
        assert!(matches!(
            call(json!([3])),
            Ok(Call::Restore {
                version: 3,
                path: None,
                ..
            })
        ));
        assert!(matches!(
            call(json!(["#4", "a.py"])),
            Ok(Call::Restore { version: 4, path: Some(p), .. }) if p == "a.py"
        ));
        assert!(call(json!([])).is_err());
        assert!(call(json!([0])).is_err());
        assert!(call(json!(["x"])).is_err());
    }
}
