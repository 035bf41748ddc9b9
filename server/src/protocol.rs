//! What duet's clients and the room server agree on beyond the y-websocket protocol: the
//! presence state a client announces (Yjs awareness, as JSON) and the close codes of a room
//! connection. The server relays any client's presence as it came; duet's bridge writes and
//! reads it as [`Presence`].

use serde::{Deserialize, Deserializer, Serialize};

/// One client's presence: who they are and, once they are in a file, where their cursor is.
/// Read leniently, since any Yjs client may announce anything: a missing or malformed part
/// takes its default instead of hiding the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    #[serde(default, deserialize_with = "or_default")]
    pub user: User,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Option::is_none"
    )]
    pub cursor: Option<Cursor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(default = "anonymous", deserialize_with = "or_anonymous")]
    pub name: String,
    #[serde(default = "grey", deserialize_with = "or_grey")]
    pub color: String,
}

impl Default for User {
    fn default() -> Self {
        User {
            name: anonymous(),
            color: grey(),
        }
    }
}

/// A cursor (a selection from `anchor` to `head`) in a file of the room, in UTF-16 code units
/// of the file's text, as Yjs counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub file: String,
    pub anchor: Option<u32>,
    pub head: u32,
}

impl Cursor {
    /// Where the selection starts: its anchor, or the head for a client that sends none.
    pub fn anchor(&self) -> u32 {
        self.anchor.unwrap_or(self.head)
    }
}

/// The close codes of a room connection: the standard ones the server uses, and duet's own.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The room was deleted: reconnecting cannot help (an application code, 4000–4999).
    pub const ROOM_DELETED: u16 = 4404;
}

fn anonymous() -> String {
    "anonymous".into()
}

fn grey() -> String {
    "#888888".into()
}

/// `T` if the value reads as one, else `T`'s default.
fn or_default<'de, D: Deserializer<'de>, T: Default + serde::de::DeserializeOwned>(
    deserializer: D,
) -> Result<T, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

fn or_anonymous<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(string_or(deserializer)?.unwrap_or_else(anonymous))
}

fn or_grey<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(string_or(deserializer)?.unwrap_or_else(grey))
}

fn string_or<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value.as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn presence_round_trips_as_the_documented_json() {
        let presence = Presence {
            user: User {
                name: "ann".into(),
                color: "#123456".into(),
            },
            cursor: Some(Cursor {
                file: "a.txt".into(),
                anchor: Some(1),
                head: 3,
            }),
        };
        let value = serde_json::to_value(&presence).unwrap();
        assert_eq!(
            value,
            json!({"user": {"name": "ann", "color": "#123456"},
                   "cursor": {"file": "a.txt", "anchor": 1, "head": 3}})
        );
        assert_eq!(serde_json::from_value::<Presence>(value).unwrap(), presence);
        let no_cursor = Presence {
            cursor: None,
            ..presence
        };
        assert_eq!(
            serde_json::to_value(&no_cursor).unwrap(),
            json!({"user": {"name": "ann", "color": "#123456"}})
        );
    }

    #[test]
    fn other_clients_presence_is_read_leniently() {
        let read = |v: serde_json::Value| serde_json::from_value::<Presence>(v).unwrap();
        let p = read(json!({}));
        assert_eq!(
            (p.user.name.as_str(), p.user.color.as_str()),
            ("anonymous", "#888888")
        );
        assert_eq!(p.cursor, None);
        let p = read(json!({"user": {"name": 7}, "cursor": {"file": "f", "head": "x"}}));
        assert_eq!(p.user.name, "anonymous");
        assert_eq!(p.cursor, None, "a malformed cursor is no cursor");
        let p = read(json!({"user": "bob", "cursor": {"file": "f", "head": 4}, "extra": 1}));
        assert_eq!(p.user, User::default());
        assert_eq!(p.cursor.unwrap().anchor(), 4, "no anchor: the head");
    }
}
