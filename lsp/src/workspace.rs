//! The workspace: which editor files are shared, under which room path, and where a buffer's
//! replaced text is kept so that it can be recovered.

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
}

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
        Ok(duet_server::paths::normalize(&joined)?)
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
