//! Where the bridge's log goes: stderr, or the file `DUET_LOG_FILE` names. Helix writes every
//! line a language server prints on stderr into its own log as an error, so once the editor
//! turns out to be Helix (and `DUET_LOG_FILE` is not set) the log moves to `duet-lsp.log` beside
//! `helix.log`, and only errors still go to stderr.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The log file, once there is one, and its path.
static FILE: OnceLock<(PathBuf, Mutex<File>)> = OnceLock::new();

/// Starts logging: to `DUET_LOG_FILE` if set, else to stderr. `DUET_LOG` filters (default
/// `info`).
pub fn init() {
    if let Some(path) = std::env::var_os("DUET_LOG_FILE").map(PathBuf::from) {
        if let Ok(file) = append(&path) {
            let _ = FILE.set((path, Mutex::new(file)));
        }
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("DUET_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Sink)
        .init();
}

/// Under Helix: moves the log to `duet-lsp.log` in Helix's cache directory (beside
/// `helix.log`) unless it already goes to a file. Returns where the log goes, if to a file.
pub fn for_helix() -> Option<PathBuf> {
    if let Some(path) = file() {
        return Some(path);
    }
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("helix");
    let path = dir.join("duet-lsp.log");
    match std::fs::create_dir_all(&dir).and_then(|()| append(&path)) {
        Ok(file) => {
            let _ = FILE.set((path.clone(), Mutex::new(file)));
            tracing::info!(pid = std::process::id(), "duet-lsp logs here (Helix)");
            Some(path)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot log to a file; logging to stderr");
            None
        }
    }
}

/// Where the log goes, if to a file.
pub fn file() -> Option<PathBuf> {
    FILE.get().map(|(path, _)| path.clone())
}

fn append(path: &PathBuf) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer tracing asks for each event.
struct Sink;

/// One event's destination: the file (and stderr too for errors), or stderr.
enum Line {
    File { error: bool },
    Stderr,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Line::File { error } => {
                if let Some((_, file)) = FILE.get() {
                    file.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .write_all(buf)?;
                }
                if *error {
                    std::io::stderr().write_all(buf)?;
                }
            }
            Line::Stderr => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::Stderr
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        match FILE.get() {
            Some(_) => Line::File {
                error: *meta.level() == Level::ERROR,
            },
            None => Line::Stderr,
        }
    }
}
