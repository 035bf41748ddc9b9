//! Where the bridge finds its room: `.duet.toml` (searched upward), environment variables,
//! `initializationOptions`, and invites.
//!
//! An invite is the one string a person pastes: `ws://HOST:PORT/ws/<room-uuid>?token=<token>`,
//! exactly what `POST /rooms` answers as `invite`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("an invite looks like ws://HOST:PORT/ws/<room>?token=<token> (or wss://); got {0:?}")]
    Shape(String),
    #[error("the invite's room id {0:?} is not a UUID")]
    RoomId(String),
    #[error("the invite has no token (…?token=<token>)")]
    NoToken,
}

/// A room to join: its server, id and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// `http://HOST:PORT` (or `https://`).
    pub server: String,
    pub room: Uuid,
    pub token: String,
}

impl Invite {
    pub fn parse(invite: &str) -> Result<Invite, InviteError> {
        let invite = invite.trim().trim_matches('"');
        let shape = || InviteError::Shape(invite.to_string());
        let (scheme, rest) = invite.split_once("://").ok_or_else(shape)?;
        let http = match scheme {
            "ws" | "http" => "http",
            "wss" | "https" => "https",
            _ => return Err(shape()),
        };
        let (host, path) = rest.split_once("/ws/").ok_or_else(shape)?;
        if host.is_empty() || host.contains('/') {
            return Err(shape());
        }
        let (room, query) = path.split_once('?').ok_or(InviteError::NoToken)?;
        let room = Uuid::parse_str(room).map_err(|_| InviteError::RoomId(room.to_string()))?;
        let token = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .filter(|t| !t.is_empty())
            .ok_or(InviteError::NoToken)?;
        Ok(Invite {
            server: format!("{http}://{host}"),
            room,
            token: token.to_string(),
        })
    }

    /// The room's WebSocket URL, without the token: the bridge sends that in a header, so
    /// that it never reaches a proxy's access log.
    pub fn ws_url(&self) -> String {
        let base = self
            .server
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{base}/ws/{}", self.room)
    }

    /// `HOST:PORT` as the invite names it, for messages.
    pub fn host(&self) -> &str {
        host_of(&self.server)
    }

    /// The invite as a person pastes it.
    pub fn to_invite_string(&self) -> String {
        format!("{}?token={}", self.ws_url(), self.token)
    }
}

/// `text` with the value of every `token=` in it hidden, for logs: messages to the user carry
/// invites, and a token in a log file is a key left on the table.
pub fn without_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("token=") {
        let (before, after) = rest.split_at(at + "token=".len());
        out.push_str(before);
        out.push('…');
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-._~%".contains(c)))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Join settings; every field optional, merged from several sources.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub invite: Option<String>,
    pub server: Option<String>,
    pub room: Option<String>,
    pub token: Option<String>,
    pub name: Option<String>,
    pub color: Option<String>,
    /// Show peers' cursors as hint diagnostics (for editors without our plugin, e.g. Helix).
    #[serde(rename = "peerDiagnostics", alias = "peer_diagnostics")]
    pub peer_diagnostics: Option<bool>,
    /// A PEM file of CA certificates trusted besides the system's, for a server whose
    /// certificate comes from a private CA. Relative to the `.duet.toml` that names it.
    pub ca: Option<PathBuf>,
    /// The server's creation secret (its `--create-token`), sent when creating a room.
    #[serde(rename = "createToken", alias = "create_token")]
    pub create_token: Option<String>,
}

impl Settings {
    /// `other`'s fields win where set.
    pub fn merged(self, other: Settings) -> Settings {
        Settings {
            invite: other.invite.or(self.invite),
            server: other.server.or(self.server),
            room: other.room.or(self.room),
            token: other.token.or(self.token),
            name: other.name.or(self.name),
            color: other.color.or(self.color),
            peer_diagnostics: other.peer_diagnostics.or(self.peer_diagnostics),
            ca: other.ca.or(self.ca),
            create_token: other.create_token.or(self.create_token),
        }
    }

    pub fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Settings {
            invite: var("DUET_INVITE"),
            server: var("DUET_SERVER"),
            room: var("DUET_ROOM"),
            token: var("DUET_TOKEN"),
            name: var("DUET_NAME"),
            color: var("DUET_COLOR"),
            peer_diagnostics: var("DUET_PEER_DIAGNOSTICS").map(|v| v == "1" || v == "true"),
            ca: var("DUET_CA_FILE").map(PathBuf::from),
            create_token: var("DUET_CREATE_TOKEN"),
        }
    }

    pub fn from_toml(text: &str, source: &Path) -> Result<Settings, String> {
        let mut settings: Settings =
            toml::from_str(text).map_err(|e| format!("{}: {e}", source.display()))?;
        if let (Some(ca), Some(dir)) = (&settings.ca, source.parent()) {
            settings.ca = Some(dir.join(ca));
        }
        Ok(settings)
    }

    /// The room these settings name, if they name one. An invite wins over separate fields.
    pub fn invite(&self) -> Result<Option<Invite>, InviteError> {
        if let Some(invite) = &self.invite {
            return Invite::parse(invite).map(Some);
        }
        match (&self.server, &self.room, &self.token) {
            (Some(server), Some(room), Some(token)) => {
                let server = server.trim_end_matches('/');
                let server = server
                    .replacen("ws://", "http://", 1)
                    .replacen("wss://", "https://", 1);
                let room = Uuid::parse_str(room).map_err(|_| InviteError::RoomId(room.clone()))?;
                Ok(Some(Invite {
                    server,
                    room,
                    token: token.clone(),
                }))
            }
            _ => Ok(None),
        }
    }
}

/// `HOST:PORT` of a server's URL.
pub fn host_of(server: &str) -> &str {
    server.split_once("://").map_or(server, |(_, host)| host)
}

/// The nearest `.duet.toml` at or above `start`.
pub fn find_duet_toml(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(".duet.toml"))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: &str = "0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e";

    #[test]
    fn tokens_are_hidden_from_logged_text() {
        let invite = format!("ws://h:1/ws/{ROOM}?token=s3cr3t-x_y");
        assert_eq!(
            without_tokens(&format!("invite: {invite}, again \"{invite}\"")),
            format!("invite: ws://h:1/ws/{ROOM}?token=…, again \"ws://h:1/ws/{ROOM}?token=…\"")
        );
        assert_eq!(without_tokens("no secret here"), "no secret here");
        assert_eq!(without_tokens("token="), "token=…");
    }

    #[test]
    fn invites_round_trip() {
        let invite = Invite::parse(&format!("ws://127.0.0.1:8000/ws/{ROOM}?token=abc")).unwrap();
        assert_eq!(invite.server, "http://127.0.0.1:8000");
        assert_eq!(invite.room.to_string(), ROOM);
        assert_eq!(invite.token, "abc");
        assert_eq!(invite.ws_url(), format!("ws://127.0.0.1:8000/ws/{ROOM}"));
        assert_eq!(
            invite.to_invite_string(),
            format!("ws://127.0.0.1:8000/ws/{ROOM}?token=abc")
        );
        let secure =
            Invite::parse(&format!(" \"wss://duet.example/ws/{ROOM}?x=1&token=t\" ")).unwrap();
        assert_eq!(secure.server, "https://duet.example");
        assert_eq!(secure.host(), "duet.example");
        assert_eq!(secure.ws_url(), format!("wss://duet.example/ws/{ROOM}"));
    }

    #[test]
    fn bad_invites_say_what_is_wrong() {
        assert!(matches!(Invite::parse("hello"), Err(InviteError::Shape(_))));
        assert!(matches!(
            Invite::parse("ftp://h/ws/x?token=a"),
            Err(InviteError::Shape(_))
        ));
        assert_eq!(
            Invite::parse("ws://h/ws/nope?token=a"),
            Err(InviteError::RoomId("nope".into()))
        );
        assert_eq!(
            Invite::parse(&format!("ws://h/ws/{ROOM}")),
            Err(InviteError::NoToken)
        );
        assert_eq!(
            Invite::parse(&format!("ws://h/ws/{ROOM}?token=")),
            Err(InviteError::NoToken)
        );
    }

    #[test]
    fn later_settings_win_and_fields_make_an_invite() {
        let file = Settings::from_toml(
            &format!("server = \"http://h:1/\"\nroom = \"{ROOM}\"\ntoken = \"t\"\nname = \"ann\""),
            Path::new(".duet.toml"),
        )
        .unwrap();
        let options = Settings {
            name: Some("bob".into()),
            ..Settings::default()
        };
        let merged = file.merged(options);
        assert_eq!(merged.name.as_deref(), Some("bob"));
        let invite = merged.invite().unwrap().unwrap();
        assert_eq!(invite.server, "http://h:1");
        let ca = Settings::from_toml("ca = \"certs/ca.pem\"", Path::new("/w/.duet.toml")).unwrap();
        assert_eq!(ca.ca.as_deref(), Some(Path::new("/w/certs/ca.pem")));
        let secret = Settings::from_toml("create_token = \"s\"", Path::new("x.toml")).unwrap();
        assert_eq!(secret.create_token.as_deref(), Some("s"));
        assert!(Settings::from_toml("nmae = 1", Path::new("x.toml"))
            .unwrap_err()
            .contains("x.toml"));
    }
}
