//! The workspace: which editor files are shared, under which room path, where a buffer's
//! replaced text is kept so that it can be recovered, how a room file the folder lacks is
//! created, and where the readable status is written for Helix.

use std::path::{Path, PathBuf};

use duet_server::paths::PathError;
use thiserror::Error;
use tower_lsp::lsp_types::{InitializeParams, Url};

/// Why a document is not shared with the room.
#[derive(Debug, Error)]
pub enum NotShared {
    #[error("{0} is not a file on disk")]
    NotAFile(Url),
    #[error("it is outside the workspace {}", .0.display())]
    Outside(PathBuf),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("it is duet's status file")]
    StatusFile,
}

/// Where the readable status is written (for Helix), relative to the root. Never shared.
pub const STATUS_FILE: &str = ".duet/status.md";

pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn new(root: PathBuf) -> Workspace {
        Workspace { root }
    }

    /// The root the editor names (`rootUri`, else the first workspace folder), else the
    /// directory the editor started us in (Helix without a root marker sends neither).
    pub fn from_initialize(params: &InitializeParams) -> Workspace {
        // rootUri is deprecated in favour of folders, but editors still send it.
        let root_uri = params.root_uri.clone();
        let root = root_uri
            .or_else(|| {
                params
                    .workspace_folders
                    .as_ref()?
                    .first()
                    .map(|f| f.uri.clone())
            })
            .and_then(|uri| uri.to_file_path().ok())
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        Workspace::new(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The room path of a document: its path relative to the root, `/`-separated. Files
    /// outside the root, and documents that are not files, are not shared.
    pub fn relative_path(&self, uri: &Url) -> Result<String, NotShared> {
        let path = uri
            .to_file_path()
            .map_err(|_| NotShared::NotAFile(uri.clone()))?;
        let relative = path
            .strip_prefix(&self.root)
            .map_err(|_| NotShared::Outside(self.root.clone()))?;
        let joined = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if joined == STATUS_FILE {
            return Err(NotShared::StatusFile);
        }
        Ok(duet_server::paths::normalize(&joined)?)
    }

    /// Where a room path is (or would be) in the workspace; `None` for a path that is not a
    /// clean relative one (the server refuses those; a peer's presence could still name one).
    pub fn file_of(&self, path: &str) -> Option<PathBuf> {
        let clean = duet_server::paths::normalize(path).ok()?;
        (clean == path && path != STATUS_FILE).then(|| self.root.join(path))
    }

    /// Creates a room file the workspace lacks, with the room's text (a file that exists is
    /// left alone). Returns its path.
    pub fn create_room_file(&self, path: &str, text: &str) -> std::io::Result<PathBuf> {
        let file = self.file_of(path).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{path:?} is not a path in the workspace"),
            )
        })?;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut f) => std::io::Write::write_all(&mut f, text.as_bytes())?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(file)
    }

    /// Writes the readable status to [`STATUS_FILE`]; returns its path.
    pub fn write_status(&self, text: &str) -> std::io::Result<PathBuf> {
        let file = self.root.join(STATUS_FILE);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
            // The status holds the room's invite, token included: git must not pick it up.
            let ignore = dir.join(".gitignore");
            if !ignore.exists() {
                std::fs::write(ignore, "*\n")?;
            }
        }
        std::fs::write(&file, text)?;
        Ok(file)
    }

    /// Saves text the room's version replaced, under the user's state directory, and returns
    /// where.
    pub fn save_recovery(&self, room: &str, path: &str, text: &str) -> std::io::Result<PathBuf> {
        let base = state_dir();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let file = base
            .join("duet/recovered")
            .join(room)
            .join(format!("{path}.{stamp}"));
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, text)?;
        Ok(file)
    }
}

/// The user's state directory: `$XDG_STATE_HOME`, else `~/.local/state`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_files_are_created_once_inside_the_root_and_the_status_file_is_not_shared() {
        let dir = std::env::temp_dir().join(format!("duet-create-{}", std::process::id()));
        let workspace = Workspace::new(dir.clone());
        let file = workspace
            .create_room_file("src/util.py", "x = 1\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x = 1\n");
        // A file that exists keeps its text.
        workspace
            .create_room_file("src/util.py", "other\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x = 1\n");
        for bad in ["../escape.py", "/etc/passwd", "a/../../b", STATUS_FILE] {
            assert!(workspace.create_room_file(bad, "x").is_err(), "{bad}");
        }
        let status = workspace.write_status("# duet\n").unwrap();
        let uri = Url::from_file_path(&status).unwrap();
        assert!(matches!(
            workspace.relative_path(&uri),
            Err(NotShared::StatusFile)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_are_named_relative_to_the_root_and_outsiders_are_refused() {
        let workspace = Workspace::new(PathBuf::from("/home/ann/project"));
        let uri = |p: &str| Url::from_file_path(p).unwrap();
        assert_eq!(
            workspace
                .relative_path(&uri("/home/ann/project/src/main.rs"))
                .unwrap(),
            "src/main.rs"
        );
        assert_eq!(
            workspace
                .relative_path(&uri("/home/ann/project/日本 🎉.txt"))
                .unwrap(),
            "日本 🎉.txt"
        );
        assert!(matches!(
            workspace.relative_path(&uri("/etc/passwd")),
            Err(NotShared::Outside(_))
        ));
        assert!(matches!(
            workspace.relative_path(&Url::parse("untitled:Untitled-1").unwrap()),
            Err(NotShared::NotAFile(_))
        ));
    }

    #[test]
    fn replaced_text_is_recoverable() {
        let dir = std::env::temp_dir().join(format!("duet-recovery-{}", std::process::id()));
        std::env::set_var("XDG_STATE_HOME", &dir);
        let file = Workspace::new(dir.clone())
            .save_recovery("room", "src/a.py", "mine\n")
            .unwrap();
        assert!(file.starts_with(dir.join("duet/recovered/room/src")));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
