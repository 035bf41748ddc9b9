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
    #[error(
        "the path contains an invisible formatting character (such as U+{0:04X}); rename the file"
    )]
    Invisible(u32),
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
    if let Some(c) = path.chars().find(|c| is_invisible(*c)) {
        return Err(PathError::Invisible(c as u32));
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

/// Unicode's invisible formatting characters (general category Cf): bidirectional overrides
/// and isolates (U+202E shows `txt.exe` as `exe.txt`), zero-width spaces, word joiners, the
/// byte-order mark, tags. Two paths that look the same must be the same file, so they are
/// refused. The zero-width joiner and non-joiner (U+200C, U+200D) stay allowed: Persian and
/// Indic words and emoji sequences need them.
fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B | 0x200E..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064
        | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
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
    fn invisible_formatting_characters_are_refused() {
        assert_eq!(
            normalize("invoice\u{202E}txt.exe"),
            Err(PathError::Invisible(0x202E))
        );
        for c in ['\u{200B}', '\u{2066}', '\u{FEFF}', '\u{00AD}', '\u{E0041}'] {
            assert_eq!(
                normalize(&format!("a{c}.txt")),
                Err(PathError::Invisible(c as u32))
            );
        }
        // Joiners belong to real words and emoji.
        assert!(
            normalize("\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}.txt")
                .is_ok()
        );
        assert!(normalize("\u{1F469}\u{200D}\u{1F4BB}.md").is_ok());
    }

    #[test]
    fn only_normal_paths_are_keys() {
        assert!(is_normal("src/main.rs"));
        assert!(!is_normal("./src/main.rs"));
        assert!(!is_normal("src//main.rs"));
        assert!(!is_normal("../x"));
    }
}
