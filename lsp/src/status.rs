//! The room's state as people read it: the same text in every editor (`duet.status` answers
//! it; Neovim and VS Code show it in a window, and for Helix, which shows only one status line,
//! the bridge writes it to `.duet/status.md`).

use std::path::PathBuf;
use std::time::SystemTime;

/// Everything the readable status says.
pub struct Overview {
    /// `connected`, `connecting`, `offline` or `idle`.
    pub state: &'static str,
    /// When the connection entered that state.
    pub since: SystemTime,
    pub room: Option<RoomFacts>,
    pub peers: Vec<PeerPlace>,
    /// The room's files.
    pub files: Vec<String>,
    /// The editor's open files: their name, and why one is not shared (`None`: shared).
    pub open: Vec<(String, Option<String>)>,
    /// The last messages shown, oldest first.
    pub recent: Vec<(SystemTime, String)>,
    pub log_file: Option<PathBuf>,
}

pub struct RoomFacts {
    pub id: String,
    pub server: String,
    pub invite: String,
}

/// Where a peer is: their file and line (1-based), if their cursor is in a file.
pub struct PeerPlace {
    pub name: String,
    pub file: Option<(String, usize)>,
}

impl Overview {
    /// The first line: the state at a glance.
    pub fn summary(&self) -> String {
        let Some(room) = &self.room else {
            return "duet: not in a room".into();
        };
        let short = &room.id[..room.id.len().min(8)];
        match self.state {
            "connected" => format!(
                "duet: room {short} · connected since {} · {} other peer(s)",
                clock(self.since),
                self.peers.len()
            ),
            state => format!("duet: room {short} · {state} since {}", clock(self.since)),
        }
    }

    /// The whole status, as Markdown that reads well as plain text.
    pub fn text(&self) -> String {
        let mut out = format!("# {}\n\n", self.summary());
        let Some(room) = &self.room else {
            out.push_str(
                "Join a room with its invite (duet.joinRoom), or create one (duet.createRoom).\n",
            );
            return self.with_log(out);
        };
        out.push_str(&format!("- room: {}\n", room.id));
        out.push_str(&format!("- server: {}\n", room.server));
        out.push_str(&format!(
            "- connection: {} since {}{}\n",
            self.state,
            clock(self.since),
            match self.state {
                "offline" => " (keep typing: your edits are kept and sync when the server is back)",
                "connecting" => " (your edits are kept)",
                _ => "",
            }
        ));
        out.push_str("\n## Invite (share it to let someone in)\n\n");
        out.push_str(&format!("{}\n", room.invite));
        out.push_str("\n## Peers\n\n");
        if self.state == "offline" {
            out.push_str("(not known while offline)\n");
        } else if self.peers.is_empty() {
            out.push_str("nobody else is in the room\n");
        }
        if self.state != "offline" {
            for peer in &self.peers {
                match &peer.file {
                    Some((file, line)) => {
                        out.push_str(&format!("- {} — {file}:{line}\n", peer.name))
                    }
                    None => out.push_str(&format!("- {} — no file open\n", peer.name)),
                }
            }
        }
        out.push_str("\n## The room's files\n\n");
        if self.files.is_empty() {
            out.push_str("none yet\n");
        }
        for file in &self.files {
            out.push_str(&format!("- {file}\n"));
        }
        out.push_str("\n## Your open files\n\n");
        if self.open.is_empty() {
            out.push_str("none\n");
        }
        for (file, why_not) in &self.open {
            match why_not {
                None => out.push_str(&format!("- {file} — shared\n")),
                Some(why) => out.push_str(&format!("- {file} — not shared: {why}\n")),
            }
        }
        self.with_log(out)
    }

    fn with_log(&self, mut out: String) -> String {
        if !self.recent.is_empty() {
            out.push_str("\n## Recent messages\n\n");
            for (at, message) in &self.recent {
                out.push_str(&format!("- {} {message}\n", clock(*at)));
            }
        }
        if let Some(file) = &self.log_file {
            out.push_str(&format!("\nThe bridge's log: {}\n", file.display()));
        }
        out
    }
}

/// A time of day, UTC, as `HH:MM:SS UTC`.
pub fn clock(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn overview(state: &'static str) -> Overview {
        Overview {
            state,
            since: SystemTime::UNIX_EPOCH
                + Duration::from_secs(86_400 * 3 + 3600 * 23 + 60 * 41 + 5),
            room: Some(RoomFacts {
                id: "3f2a1b9c-0000-4000-8000-000000000000".into(),
                server: "http://127.0.0.1:8000".into(),
                invite: "ws://127.0.0.1:8000/ws/3f2a1b9c-0000-4000-8000-000000000000?token=t"
                    .into(),
            }),
            peers: vec![PeerPlace {
                name: "bob".into(),
                file: Some(("util.py".into(), 3)),
            }],
            files: vec!["main.py".into(), "util.py".into()],
            open: vec![
                ("main.py".into(), None),
                (
                    "/etc/hosts".into(),
                    Some("it is outside the workspace".into()),
                ),
            ],
            recent: vec![(
                SystemTime::UNIX_EPOCH + Duration::from_secs(3600),
                "duet: a.py now shows the room's text; your previous text is saved in /x".into(),
            )],
            log_file: None,
        }
    }

    #[test]
    fn the_status_names_everything_a_person_needs() {
        let text = overview("connected").text();
        for needle in [
            "# duet: room 3f2a1b9c · connected since 23:41:05 UTC · 1 other peer(s)",
            "- server: http://127.0.0.1:8000",
            "ws://127.0.0.1:8000/ws/3f2a1b9c-0000-4000-8000-000000000000?token=t\n",
            "- bob — util.py:3",
            "- util.py\n",
            "- main.py — shared",
            "- /etc/hosts — not shared: it is outside the workspace",
            "- 01:00:00 UTC duet: a.py now shows the room's text; your previous text is saved in /x",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn offline_says_since_when_and_lists_no_peers() {
        let text = overview("offline").text();
        assert!(text.contains("offline since 23:41:05 UTC"), "{text}");
        assert!(text.contains("(not known while offline)"), "{text}");
        assert!(!text.contains("bob"), "{text}");
    }
}
