//! Workspace-relative file paths: the one rule both the server and the bridge apply.
//!
//! A room's files are keyed by a normalised, workspace-relative path with `/` separators. The
//! server refuses anything else from the REST API and from WebSocket peers (a stock Yjs client
//! can put any key in the map, so the server checks every update), and the bridge uses the same
//! function to name an editor's files, so that both agree byte for byte.

use thiserror::Error;

/// Longest accepted path, in bytes. Long enough for any real tree, short enough to keep keys
/// cheap to store and to show.
pub const MAX_PATH_BYTES: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the path contains a NUL or control character")]
    ControlCharacter,
    #[error("the path is absolute; use a path relative to the workspace root")]
    Absolute,
    #[error("the path leaves the workspace (`..`)")]
    Escapes,
}

/// Normalises a workspace-relative path: `\` becomes `/`, `.` segments and repeated slashes are
/// dropped. Absolute paths (`/x`, `C:\x`, `\\host\x`), `..` segments, control characters and
/// over-long paths are refused rather than repaired, because silently repairing them would map
/// two different files onto one key.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    let unified = path.replace('\\', "/");
    let bytes = unified.as_bytes();
    let drive_letter = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if unified.starts_with('/') || drive_letter {
        return Err(PathError::Absolute);
    }
    let mut segments = Vec::new();
    for segment in unified.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(PathError::Escapes),
            other => segments.push(other),
        }
    }
    if segments.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(segments.join("/"))
}

/// True when `path` is already in normal form, i.e. acceptable as a key of the room's file map.
pub fn is_normal(path: &str) -> bool {
    normalize(path).is_ok_and(|normal| normal == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalised() {
        assert_eq!(normalize("src/main.rs").unwrap(), "src/main.rs");
        assert_eq!(normalize("./src//lib.rs").unwrap(), "src/lib.rs");
        assert_eq!(normalize("src\\win\\x.py").unwrap(), "src/win/x.py");
        assert_eq!(normalize("dir/").unwrap(), "dir");
        assert_eq!(normalize("日本/файл 🎉.txt").unwrap(), "日本/файл 🎉.txt");
    }

    #[test]
    fn escaping_and_absolute_paths_are_refused() {
        assert_eq!(normalize("../etc/passwd"), Err(PathError::Escapes));
        assert_eq!(normalize("a/../../b"), Err(PathError::Escapes));
        assert_eq!(normalize("a/.."), Err(PathError::Escapes));
        assert_eq!(normalize("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(normalize("C:\\Windows"), Err(PathError::Absolute));
        assert_eq!(normalize("\\\\host\\share"), Err(PathError::Absolute));
    }

    #[test]
    fn empty_control_and_long_paths_are_refused() {
        assert_eq!(normalize(""), Err(PathError::Empty));
        assert_eq!(normalize("./"), Err(PathError::Empty));
        assert_eq!(normalize("a\0b"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("a\nb"), Err(PathError::ControlCharacter));
        assert_eq!(
            normalize(&"a".repeat(MAX_PATH_BYTES + 1)),
            Err(PathError::TooLong)
        );
        assert!(normalize(&"a".repeat(MAX_PATH_BYTES)).is_ok());
    }

    #[test]
    fn only_normal_paths_are_keys() {
        assert!(is_normal("src/main.rs"));
        assert!(!is_normal("./src/main.rs"));
        assert!(!is_normal("src//main.rs"));
        assert!(!is_normal("../x"));
    }
}
