//! A scripted LSP client that behaves towards `duet-lsp` the way VS Code, Neovim and Helix do,
//! as measured (`docs/design.md`, "How the editors behave"). It starts the real bridge binary
//! over stdio, keeps its own buffers and versions, answers the bridge's requests and records
//! what the bridge tells the user.
//!
//! What each [`Kind`] does differently:
//! - **VS Code**: utf-16 only; `workspace/applyEdit` with a version other than the buffer's is
//!   answered `{"applied": false}`; an applied edit is echoed as `didChange` (the same edit)
//!   *before* the `applied: true` reply; one `didChange` per edit, no debounce.
//! - **Neovim**: offers utf-8/16/32; a stale versioned edit is silently dropped and still
//!   answered `{"applied": true}`; null/0/future versions apply unchecked; the echo is re-derived
//!   by a line diff (the whole changed line range); `didChange` is rate-limited like Neovim's
//!   `debounce_text_changes` (150 ms by default: a burst is batched into one notification with
//!   several changes; sent before any request, not before an `applyEdit` is processed).
//! - **Helix**: offers utf-8/32/16; stale versioned edits get `{"applied": false,
//!   "failureReason": "document has changed"}`; echo (V+1) before the reply; versions can jump
//!   without a `didChange` (completion previews, [`FakeEditor::helix_skip_versions`]); several
//!   cursors are one `didChange` with several changes; the completion-preview revert hazard is
//!   scripted by [`FakeEditor::helix_begin_completion`] / [`FakeEditor::helix_accept_completion`].
//!   Messages (`window/showMessage`) take the one status line, each replacing the one before,
//!   cut at 120 columns, and the next keystroke clears it ([`FakeEditor::status_line`]).
//!   `window/showDocument` and picking from the workspace-symbol picker
//!   ([`FakeEditor::workspace_symbols`], [`FakeEditor::pick_symbol`]) open the file as Helix does:
//!   from disk, or as a new empty buffer with that path if it does not exist (written only on
//!   `:w`), with a `didOpen`, and put the cursor at the range's start ([`FakeEditor::shown`]).
//!
//! All state lives behind one lock that is never held across an `.await`, and every message to
//! the bridge is queued while that lock is held: like a real editor's single event loop, buffer
//! changes and the notifications describing them can never be reordered. Positions are converted
//! here with plain `String`/`char` arithmetic in the negotiated encoding, independently of the
//! bridge's own code. Anything the bridge does against its documented contract (a position
//! inside a character, an `applyEdit` without a version while the bridge knows it, a non-JSON
//! frame on stdout, ...) is recorded as a *violation*; [`converge`] fails on any.
//!
//! The bridge process is killed when the [`FakeEditor`] drops; every wait has a timeout. On a
//! failure, the whole LSP trace and the bridge's log are written to `target/bridge-traces/`
//! (the panic message names the file); `DUET_TRACE=1` also prints every message as it goes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

use crate::binary;
use crate::server::{RoomRef, Server, TempDir};

/// The default bound for waits on the bridge.
pub const WAIT: Duration = Duration::from_secs(10);

/// Which editor to behave like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    VsCode,
    Neovim,
    Helix,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::VsCode, Kind::Neovim, Kind::Helix];

    pub fn name(self) -> &'static str {
        match self {
            Kind::VsCode => "vscode",
            Kind::Neovim => "neovim",
            Kind::Helix => "helix",
        }
    }

    /// `capabilities.general.positionEncodings` as the real editor sends it.
    pub fn offered_encodings(self) -> Option<Vec<String>> {
        let list: &[&str] = match self {
            Kind::VsCode => return None,
            Kind::Neovim => &["utf-8", "utf-16", "utf-32"],
            Kind::Helix => &["utf-8", "utf-32", "utf-16"],
        };
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    /// VS Code starts at 1, Helix at 0; Neovim sends `b:changedtick`, which is already past 0
    /// for a file read from disk (0 would matter: Neovim applies version-0 edits unchecked).
    fn open_version(self) -> i64 {
        match self {
            Kind::VsCode => 1,
            Kind::Neovim => 2,
            Kind::Helix => 0,
        }
    }

    fn client_info(self) -> Value {
        match self {
            Kind::VsCode => json!({"name": "Visual Studio Code", "version": "1.100.3"}),
            Kind::Neovim => json!({"name": "Neovim", "version": "0.11.4"}),
            Kind::Helix => json!({"name": "helix", "version": "25.07.1"}),
        }
    }
}

/// A position encoding (LSP 3.17 `PositionEncodingKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf16,
    Utf32,
}

impl Encoding {
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "utf-8" => Some(Encoding::Utf8),
            "utf-16" => Some(Encoding::Utf16),
            "utf-32" => Some(Encoding::Utf32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Utf16 => "utf-16",
            Encoding::Utf32 => "utf-32",
        }
    }

    /// Code units one character takes.
    pub fn units(self, c: char) -> usize {
        match self {
            Encoding::Utf8 => c.len_utf8(),
            Encoding::Utf16 => c.len_utf16(),
            Encoding::Utf32 => 1,
        }
    }
}

/// An LSP position, in the negotiated encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub character: u32,
}

impl Pos {
    pub fn new(line: u32, character: u32) -> Pos {
        Pos { line, character }
    }

    pub fn to_json(self) -> Value {
        json!({"line": self.line, "character": self.character})
    }
}

// ---------------------------------------------------------------------------------------------
// Text arithmetic: byte offsets <-> LSP positions, with LSP's line ends (\n, \r\n, \r).

/// Byte offsets where each line starts.
pub fn line_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = vec![0];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => starts.push(i + 1),
            b'\r' => {
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                starts.push(i + 1);
            }
            _ => {}
        }
        i += 1;
    }
    starts
}

/// Byte offset where line `line`'s content ends (before its line terminator).
fn line_content_end(text: &str, starts: &[usize], line: usize) -> usize {
    match starts.get(line + 1) {
        None => text.len(),
        Some(&next) => {
            let bytes = text.as_bytes();
            if next >= 2 && bytes[next - 1] == b'\n' && bytes[next - 2] == b'\r' {
                next - 2
            } else {
                next - 1
            }
        }
    }
}

/// The position of byte offset `offset` (which must be a char boundary).
pub fn position_of(text: &str, offset: usize, encoding: Encoding) -> Pos {
    let starts = line_starts(text);
    let line = starts.partition_point(|&s| s <= offset) - 1;
    let character: usize = text[starts[line]..offset]
        .chars()
        .map(|c| encoding.units(c))
        .sum();
    Pos::new(line as u32, character as u32)
}

/// Where a position lands in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Byte offset, clamped to the text (line past the end: end of text; character past the
    /// line's end: the line's end; inside a character: that character's start).
    pub offset: usize,
    pub out_of_range: bool,
    pub inside_char: bool,
}

/// Resolves a position to a byte offset, LSP-style clamped.
pub fn resolve(text: &str, pos: Pos, encoding: Encoding) -> Resolved {
    let starts = line_starts(text);
    let line = pos.line as usize;
    if line >= starts.len() {
        return Resolved {
            offset: text.len(),
            out_of_range: true,
            inside_char: false,
        };
    }
    let (start, end) = (starts[line], line_content_end(text, &starts, line));
    let want = pos.character as usize;
    let mut units = 0;
    for (i, c) in text[start..end].char_indices() {
        if units == want {
            return Resolved {
                offset: start + i,
                out_of_range: false,
                inside_char: false,
            };
        }
        let u = encoding.units(c);
        if units + u > want {
            return Resolved {
                offset: start + i,
                out_of_range: false,
                inside_char: true,
            };
        }
        units += u;
    }
    Resolved {
        offset: end,
        out_of_range: units != want,
        inside_char: false,
    }
}

/// Byte offset of character (Unicode scalar) index `n`; panics past the end.
pub fn char_to_byte(text: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    match text.char_indices().nth(n) {
        Some((b, _)) => b,
        None => {
            let count = text.chars().count();
            assert!(
                n == count,
                "char offset {n} is past the end ({count} chars)"
            );
            text.len()
        }
    }
}

fn parse_pos(v: &Value) -> Option<Pos> {
    Some(Pos::new(
        u32::try_from(v.get("line")?.as_u64()?).ok()?,
        u32::try_from(v.get("character")?.as_u64()?).ok()?,
    ))
}

/// The line diff Neovim's echo is made of: one change replacing the whole range of lines that
/// differ between `old` and `new` (from the start of the first changed line).
pub fn line_diff(old: &str, new: &str) -> Option<(usize, usize, String)> {
    if old == new {
        return None;
    }
    let ol: Vec<&str> = old.split_inclusive('\n').collect();
    let nl: Vec<&str> = new.split_inclusive('\n').collect();
    let mut prefix = 0;
    while prefix < ol.len() && prefix < nl.len() && ol[prefix] == nl[prefix] {
        prefix += 1;
    }
    let mut suffix = 0;
    while suffix < ol.len() - prefix
        && suffix < nl.len() - prefix
        && ol[ol.len() - 1 - suffix] == nl[nl.len() - 1 - suffix]
    {
        suffix += 1;
    }
    let start: usize = ol[..prefix].iter().map(|l| l.len()).sum();
    let old_tail: usize = ol[ol.len() - suffix..].iter().map(|l| l.len()).sum();
    let new_tail: usize = nl[nl.len() - suffix..].iter().map(|l| l.len()).sum();
    Some((
        start,
        old.len() - old_tail,
        new[start..new.len() - new_tail].to_string(),
    ))
}

/// The smallest single replacement turning `old` into `new` (character-level common prefix and
/// suffix): byte range in `old` and the replacement text.
pub fn char_diff(old: &str, new: &str) -> Option<(usize, usize, String)> {
    if old == new {
        return None;
    }
    let mut prefix = 0;
    for (a, b) in old.chars().zip(new.chars()) {
        if a != b {
            break;
        }
        prefix += a.len_utf8();
    }
    let mut suffix = 0;
    for (a, b) in old[prefix..].chars().rev().zip(new[prefix..].chars().rev()) {
        if a != b {
            break;
        }
        suffix += a.len_utf8();
    }
    Some((
        prefix,
        old.len() - suffix,
        new[prefix..new.len() - suffix].to_string(),
    ))
}

/// Moves a cursor through a replacement of `[start, end)` by `len` bytes. A cursor exactly at
/// an insertion point stays before the inserted text (so a person's typed word stays whole).
fn map_cursor(cursor: usize, start: usize, end: usize, len: usize) -> usize {
    if cursor <= start {
        cursor
    } else if cursor >= end {
        cursor - (end - start) + len
    } else {
        start + len
    }
}

pub fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                uri.push(b as char)
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri
}

/// The reverse of [`file_uri`]'s escaping: `%XX` back to bytes (a path's bytes are UTF-8).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn language_id(kind: Kind, path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "py" => "python",
        "rs" => "rust",
        "js" => "javascript",
        "ts" => "typescript",
        "go" => "go",
        "md" => "markdown",
        _ => match kind {
            Kind::VsCode => "plaintext",
            Kind::Neovim | Kind::Helix => "text",
        },
    }
}

// ---------------------------------------------------------------------------------------------
// A small seeded PRNG (splitmix64), so randomized tests are reproducible without a dependency.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// `DUET_SEED` if set, else a fresh seed; printed either way so a failure can be replayed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("DUET_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            });
        eprintln!("{test}: DUET_SEED={seed} (set it to replay this run's choices)");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One of `items`, which must not be empty (a fixed list); see [`Rng::choose`].
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        self.choose(items)
            .expect("pick from a fixed, non-empty list")
    }

    /// One of `items`, or `None` if there are none (a list computed from a text).
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

// ---------------------------------------------------------------------------------------------
// The editor's state.

/// Counters of what happened, for tests to check that a race really took place.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// `workspace/applyEdit` requests received.
    pub apply_edits: usize,
    /// ... applied to the buffer.
    pub applied: usize,
    /// ... answered `applied: false` (VS Code, Helix: stale version).
    pub rejected: usize,
    /// ... silently skipped but answered `applied: true` (Neovim: stale version).
    pub dropped: usize,
    pub did_change_sent: usize,
    pub max_changes_in_one_notification: usize,
    /// `didChange`s whose version jumped by more than one.
    pub version_gaps: usize,
}

/// How [`FakeEditor::shutdown`] went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shutdown {
    /// `shutdown` got a result.
    pub answered: bool,
    /// The process ended within 5 s of `exit`, its stdin still open.
    pub exited_on_exit: bool,
    /// ... or only once its stdin was closed.
    pub exited_after_stdin_closed: bool,
    /// Exit status 0.
    pub success: bool,
}

impl Shutdown {
    /// As LSP asks: answered `shutdown`, then ended with status 0 on `exit`.
    pub fn clean(&self) -> bool {
        self.answered && self.exited_on_exit && self.success
    }
}

/// Something the bridge sent us: a notification, or a request we answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub params: Value,
    pub at: Duration,
}

struct Doc {
    path: String,
    text: String,
    version: i64,
    /// Versions we have told the bridge (didOpen/didChange): the only ones it may cite.
    sent_versions: HashSet<i64>,
    last_sent_version: i64,
    /// Byte offsets of cursors that move with edits (see `map_cursor`).
    cursors: HashMap<u64, usize>,
    /// Neovim: changes not sent yet, and its rate limiter.
    batch: Vec<Value>,
    timer_armed: bool,
    last_sent: Option<Instant>,
    /// Helix: the state saved when a completion was requested.
    helix_saved: Option<String>,
    /// An applyEdit was refused and the bridge has not shown that it saw a `didChange` since
    /// (by citing its version): it cannot know the version, and may send its next edit
    /// unchecked (version null). A `didChange` on its way does not count: the bridge may have
    /// decided before it arrived.
    refused_since_change: bool,
    /// The last version sent when the refusal happened.
    refused_at_version: i64,
}

impl Doc {
    fn refused(&mut self) {
        self.refused_since_change = true;
        self.refused_at_version = self.last_sent_version;
    }
}

struct State {
    kind: Kind,
    label: String,
    me: Weak<Mutex<State>>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    started: Instant,
    encoding: Encoding,
    full_sync: bool,
    debounce: Duration,
    root: PathBuf,
    docs: HashMap<String, Doc>,
    next_id: i64,
    next_cursor: u64,
    waiters: HashMap<i64, oneshot::Sender<Value>>,
    received: Vec<Received>,
    held: bool,
    held_queue: VecDeque<(Value, Value)>,
    stats: Stats,
    trace: VecDeque<String>,
    trace_dropped: usize,
    violations: Vec<String>,
    exited: bool,
    /// Helix: what its one status line shows, if anything.
    status_line: Option<String>,
    /// The document last put in front by `showDocument` or a picked symbol, and the cursor.
    shown: Option<(String, Pos)>,
}

/// How wide Helix's status line was where it was measured.
const HELIX_STATUS_WIDTH: usize = 120;

const TRACE_LINES: usize = 20_000;

impl State {
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a message in the trace (`DUET_TRACE` also prints it). Long messages are cut at
    /// 2,000 bytes unless `DUET_TRACE_FULL` is set, to replay a run's texts from its trace.
    fn trace(&mut self, dir: &str, message: &str) {
        if std::env::var_os("DUET_TRACE").is_some() {
            eprintln!("[{}] {dir} {message}", self.label);
        }
        let mut text = message.to_string();
        if text.len() > 2000 && std::env::var_os("DUET_TRACE_FULL").is_none() {
            let mut cut = 2000;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        let line = format!("{:>9.3}s {dir} {text}", self.elapsed().as_secs_f64());
        if self.trace.len() >= TRACE_LINES {
            self.trace.pop_front();
            self.trace_dropped += 1;
        }
        self.trace.push_back(line);
    }

    fn violation(&mut self, what: String) {
        self.trace("!!", &what);
        self.violations.push(what);
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        self.trace("->", &body);
        self.send_body(body.into_bytes());
    }

    fn send_body(&mut self, body: Vec<u8>) {
        let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        frame.extend(body);
        let _ = self.out.send(frame);
    }

    /// (`params: null` is left out, as VS Code and Neovim do: `shutdown` and `exit` have none.)
    fn notify(&mut self, method: &str, params: Value) {
        let mut message = json!({"jsonrpc": "2.0", "method": method});
        if !params.is_null() {
            message["params"] = params;
        }
        self.send(message);
    }

    fn reply(&mut self, id: Value, result: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    fn request(&mut self, method: &str, params: Value) -> oneshot::Receiver<Value> {
        // Neovim sends its pending didChange before any request.
        self.send_all_pending();
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(id, tx);
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if !params.is_null() {
            message["params"] = params;
        }
        self.send(message);
        rx
    }

    fn uri(&self, path: &str) -> String {
        file_uri(&self.root.join(path))
    }

    fn doc(&self, path: &str) -> &Doc {
        let uri = self.uri(path);
        match self.docs.get(&uri) {
            Some(doc) => doc,
            None => panic!("{}: {path} is not open", self.label),
        }
    }

    fn doc_mut(&mut self, path: &str) -> &mut Doc {
        let uri = self.uri(path);
        let label = self.label.clone();
        match self.docs.get_mut(&uri) {
            Some(doc) => doc,
            None => panic!("{label}: {path} is not open"),
        }
    }

    // --- what the user does --------------------------------------------------------------

    fn open(&mut self, path: &str, text: &str) {
        let uri = self.uri(path);
        let version = self.kind.open_version();
        let mut doc = Doc {
            path: path.to_string(),
            text: text.to_string(),
            version,
            sent_versions: HashSet::new(),
            last_sent_version: version,
            cursors: HashMap::new(),
            batch: Vec::new(),
            timer_armed: false,
            last_sent: None,
            helix_saved: None,
            refused_since_change: false,
            refused_at_version: version,
        };
        doc.sent_versions.insert(version);
        self.docs.insert(uri.clone(), doc);
        let language = language_id(self.kind, path);
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}}),
        );
    }

    /// Puts a document in front as Helix does: opened from disk if it is not open yet, or as a
    /// new empty buffer with that path when there is no such file; the cursor at `at`. False for
    /// a URI that is not a file in the workspace.
    fn show(&mut self, uri: &str, at: Pos) -> bool {
        let root = file_uri(&self.root) + "/";
        let Some(path) = uri.strip_prefix(&root).map(percent_decode) else {
            self.violation(format!(
                "asked to show {uri}, which is not in the workspace"
            ));
            return false;
        };
        if !self.docs.contains_key(uri) {
            let text = std::fs::read_to_string(self.root.join(&path)).unwrap_or_default();
            self.open(&path, &text);
        }
        self.shown = Some((path, at));
        true
    }

    /// The user's edit: non-overlapping byte ranges of the current text, one transaction (one
    /// version, one `didChange` with one change per range).
    fn user_edit(&mut self, path: &str, mut edits: Vec<(usize, usize, String)>) {
        // A keystroke clears Helix's status line.
        self.status_line = None;
        let kind = self.kind;
        let encoding = self.encoding;
        let uri = self.uri(path);
        let doc = self.doc_mut(path);
        let mut changes = Vec::new();
        // Helix lists changes from the top, each in the coordinates left by the previous ones;
        // VS Code and Neovim list them bottom-up.
        if kind == Kind::Helix {
            edits.sort_by_key(|e| e.0);
        } else {
            edits.sort_by_key(|e| std::cmp::Reverse(e.0));
        }
        let mut delta: isize = 0;
        for (start, end, text) in edits {
            let (start, end) = if kind == Kind::Helix {
                (
                    (start as isize + delta) as usize,
                    (end as isize + delta) as usize,
                )
            } else {
                (start, end)
            };
            changes.push(replace_in(doc, start, end, &text, encoding));
            delta += text.len() as isize - (end as isize - start as isize);
        }
        doc.version += 1;
        self.emit(&uri, changes);
    }

    /// Queues or sends a didChange, Neovim's rate limit included.
    fn emit(&mut self, uri: &str, changes: Vec<Value>) {
        if changes.is_empty() {
            return;
        }
        if self.kind != Kind::Neovim || self.debounce.is_zero() {
            return self.send_did_change(uri, changes);
        }
        let debounce = self.debounce;
        let doc = self.docs.get_mut(uri).expect("open");
        doc.batch.extend(changes);
        if doc.timer_armed {
            return;
        }
        let wait = match doc.last_sent {
            None => debounce,
            Some(t) => debounce.saturating_sub(t.elapsed()),
        };
        if wait.is_zero() {
            self.send_pending(uri);
        } else {
            doc.timer_armed = true;
            let (me, uri) = (self.me.clone(), uri.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(state) = me.upgrade() {
                    state.lock().expect("editor state").send_pending(&uri);
                }
            });
        }
    }

    fn send_pending(&mut self, uri: &str) {
        let Some(doc) = self.docs.get_mut(uri) else {
            return;
        };
        doc.timer_armed = false;
        doc.last_sent = Some(Instant::now());
        if !doc.batch.is_empty() {
            let changes = std::mem::take(&mut doc.batch);
            self.send_did_change(uri, changes);
        }
    }

    fn send_all_pending(&mut self) {
        let uris: Vec<String> = self
            .docs
            .iter()
            .filter(|(_, d)| !d.batch.is_empty())
            .map(|(u, _)| u.clone())
            .collect();
        for uri in uris {
            self.send_pending(&uri);
        }
    }

    fn send_did_change(&mut self, uri: &str, changes: Vec<Value>) {
        let full_sync = self.full_sync;
        let doc = self.docs.get_mut(uri).expect("open");
        let version = doc.version;
        let changes = if full_sync {
            vec![json!({"text": doc.text})]
        } else {
            changes
        };
        if version > doc.last_sent_version + 1 {
            self.stats.version_gaps += 1;
        }
        doc.sent_versions.insert(version);
        doc.last_sent_version = version;
        self.stats.did_change_sent += 1;
        self.stats.max_changes_in_one_notification = self
            .stats
            .max_changes_in_one_notification
            .max(changes.len());
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": changes}),
        );
    }

    // --- what the bridge sends -------------------------------------------------------------

    fn dispatch(&mut self, message: Value) {
        self.trace("<-", &message.to_string());
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let id = message.get("id").cloned();
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        match (method, id) {
            (Some(method), Some(id)) => self.on_request(id, &method, params),
            (Some(method), None) => {
                if self.kind == Kind::Helix && method == "window/showMessage" {
                    let line: String = params["message"]
                        .as_str()
                        .unwrap_or_default()
                        .replace('\n', " ")
                        .chars()
                        .take(HELIX_STATUS_WIDTH)
                        .collect();
                    self.status_line = Some(line);
                }
                self.received.push(Received {
                    method,
                    params,
                    at: self.elapsed(),
                })
            }
            (None, Some(id)) => {
                let waiter = id.as_i64().and_then(|id| self.waiters.remove(&id));
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(message);
                    }
                    None => self.violation(format!("a response to no request of ours: {message}")),
                }
            }
            (None, None) => self.violation(format!("not a JSON-RPC message: {message}")),
        }
    }

    fn on_request(&mut self, id: Value, method: &str, params: Value) {
        let record = |s: &mut State| {
            s.received.push(Received {
                method: method.to_string(),
                params: params.clone(),
                at: s.elapsed(),
            })
        };
        match method {
            "workspace/applyEdit" => {
                record(self);
                self.stats.apply_edits += 1;
                if self.held {
                    self.trace("..", "applyEdit held (it is still on its way)");
                    self.held_queue.push_back((id, params));
                } else {
                    self.apply_edit(id, &params);
                }
            }
            "window/showMessageRequest" => {
                record(self);
                let first = params
                    .get("actions")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first().cloned())
                    .unwrap_or(Value::Null);
                self.reply(id, first);
            }
            "window/workDoneProgress/create"
            | "client/registerCapability"
            | "client/unregisterCapability"
            | "workspace/semanticTokens/refresh"
            | "workspace/inlayHint/refresh"
            | "workspace/diagnostic/refresh"
            | "workspace/codeLens/refresh" => {
                record(self);
                self.reply(id, Value::Null);
            }
            "workspace/configuration" => {
                record(self);
                let n = params["items"].as_array().map_or(0, Vec::len);
                self.reply(id, Value::Array(vec![Value::Null; n]));
            }
            "workspace/workspaceFolders" => {
                let uri = file_uri(&self.root);
                self.reply(id, json!([{"uri": uri, "name": "ws"}]));
            }
            "window/showDocument" => {
                record(self);
                if self.kind == Kind::Helix {
                    let uri = params["uri"].as_str().unwrap_or_default().to_string();
                    let at = parse_pos(&params["selection"]["start"]).unwrap_or(Pos::new(0, 0));
                    let success = self.show(&uri, at);
                    self.reply(id, json!({ "success": success }));
                } else {
                    self.reply(id, json!({"success": true}));
                }
            }
            _ => {
                record(self);
                self.send(json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": format!("unhandled method {method}")}}));
            }
        }
    }

    fn release(&mut self) {
        self.held = false;
        while let Some((id, params)) = self.held_queue.pop_front() {
            self.apply_edit(id, &params);
        }
    }

    fn apply_edit(&mut self, id: Value, params: &Value) {
        let edits = self.parse_workspace_edit(&params["edit"]);
        if edits.len() != 1 || edits[0].edits.len() != 1 {
            self.violation(format!(
                "docs/bridge.md: applyEdit holds one TextDocumentEdit with one TextEdit; got {}",
                params["edit"]
            ));
        }
        for de in &edits {
            let Some(doc) = self.docs.get(&de.uri) else {
                let uri = de.uri.clone();
                self.violation(format!("applyEdit for {uri}, which is not open"));
                continue;
            };
            match de.version {
                None if !doc.refused_since_change => self.violation(format!(
                    "applyEdit for {} without a version, though the bridge knows it \
                     (null only after a refusal with no didChange since)",
                    doc.path
                )),
                None => {}
                Some(v) if !doc.sent_versions.contains(&v) => {
                    let path = doc.path.clone();
                    self.violation(format!(
                        "applyEdit for {path} cites version {v}, which the editor never sent"
                    ))
                }
                Some(_) => {}
            }
        }
        for de in &edits {
            // Citing a version sent after the refusal shows the bridge knows the version again.
            if let (Some(v), Some(doc)) = (de.version, self.docs.get_mut(&de.uri)) {
                if doc.refused_since_change && v > doc.refused_at_version {
                    doc.refused_since_change = false;
                }
            }
        }
        let edits: Vec<DocEdit> = edits
            .into_iter()
            .filter(|de| self.docs.contains_key(&de.uri))
            .collect();
        if edits.is_empty() {
            self.stats.rejected += 1;
            self.reply(
                id,
                json!({"applied": false, "failureReason": "no such open document"}),
            );
            return;
        }
        let result = match self.kind {
            Kind::VsCode => {
                let stale = edits
                    .iter()
                    .any(|de| de.version.is_some_and(|v| v != self.docs[&de.uri].version));
                if stale {
                    self.stats.rejected += 1;
                    for de in &edits {
                        self.docs.get_mut(&de.uri).expect("open").refused();
                    }
                    json!({"applied": false})
                } else {
                    for de in &edits {
                        self.apply_doc_edit(de, false, true);
                    }
                    self.stats.applied += 1;
                    json!({"applied": true})
                }
            }
            Kind::Neovim => {
                for (i, de) in edits.iter().enumerate() {
                    let current = self.docs[&de.uri].version;
                    if i == 0 && de.version.is_some_and(|v| v > 0 && current > v) {
                        self.stats.dropped += 1;
                        let what = format!(
                            "Buffer {} newer than edits: skipped, answering applied:true",
                            self.docs[&de.uri].path
                        );
                        self.trace("..", &what);
                        continue;
                    }
                    self.apply_doc_edit(de, true, false);
                    self.stats.applied += 1;
                }
                json!({"applied": true})
            }
            Kind::Helix => {
                let mut result = json!({"applied": true});
                for (i, de) in edits.iter().enumerate() {
                    if de.version.is_some_and(|v| v != self.docs[&de.uri].version) {
                        self.stats.rejected += 1;
                        self.docs.get_mut(&de.uri).expect("open").refused();
                        let path = self.docs[&de.uri].path.clone();
                        self.trace("..", &format!("outdated workspace edit for {path:?}"));
                        result = json!({"applied": false, "failureReason": "document has changed", "failedChange": i});
                        break;
                    }
                    self.apply_doc_edit(de, false, true);
                    self.stats.applied += 1;
                }
                result
            }
        };
        self.reply(id, result);
    }

    fn parse_workspace_edit(&mut self, edit: &Value) -> Vec<DocEdit> {
        let mut out = Vec::new();
        let parse_edits = |edits: &Value| -> Vec<(Value, String)> {
            edits
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            (
                                e["range"].clone(),
                                e["newText"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(changes) = edit.get("documentChanges").and_then(Value::as_array) {
            for change in changes {
                if change.get("kind").is_some() {
                    self.violation(format!("unexpected resource operation: {change}"));
                    continue;
                }
                out.push(DocEdit {
                    uri: change["textDocument"]["uri"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    version: change["textDocument"]["version"].as_i64(),
                    edits: parse_edits(&change["edits"]),
                });
            }
        } else if let Some(changes) = edit.get("changes").and_then(Value::as_object) {
            for (uri, edits) in changes {
                out.push(DocEdit {
                    uri: uri.clone(),
                    version: None,
                    edits: parse_edits(edits),
                });
            }
        }
        out
    }

    /// Applies one TextDocumentEdit (ranges relative to the text before it, applied bottom-up)
    /// and echoes it: the same edit (VS Code, Helix) or a line diff (Neovim).
    fn apply_doc_edit(&mut self, de: &DocEdit, line_diff_echo: bool, one_version: bool) {
        let encoding = self.encoding;
        let doc = self.docs.get_mut(&de.uri).expect("open");
        let path = doc.path.clone();
        let mut problems = Vec::new();
        let mut resolved = Vec::new();
        for (i, (range, text)) in de.edits.iter().enumerate() {
            let (Some(start), Some(end)) = (parse_pos(&range["start"]), parse_pos(&range["end"]))
            else {
                problems.push(format!("applyEdit for {path}: malformed range {range}"));
                continue;
            };
            let (s, e) = (
                resolve(&doc.text, start, encoding),
                resolve(&doc.text, end, encoding),
            );
            for (what, r) in [("start", s), ("end", e)] {
                if r.inside_char {
                    problems.push(format!(
                        "applyEdit for {path}: {what} {range} is inside a character ({})",
                        encoding.name()
                    ));
                }
                if r.out_of_range {
                    problems.push(format!(
                        "applyEdit for {path}: {what} {range} is out of range"
                    ));
                }
            }
            resolved.push((s.offset, e.offset.max(s.offset), text.clone(), i));
        }
        resolved.sort_by_key(|r| std::cmp::Reverse((r.0, r.3)));
        let before = line_diff_echo.then(|| doc.text.clone());
        let mut changes = Vec::new();
        let mut last_start = usize::MAX;
        for (start, end, text, _) in resolved {
            if end > last_start {
                problems.push(format!("applyEdit for {path}: overlapping edits"));
                continue;
            }
            last_start = start;
            changes.push(replace_in(doc, start, end, &text, encoding));
            if !one_version {
                doc.version += 1;
            }
        }
        if one_version {
            doc.version += 1;
        }
        if let Some(before) = before {
            changes = match line_diff(&before, &doc.text) {
                Some((s, e, text)) => vec![json!({"range": {
                    "start": position_of(&before, s, encoding).to_json(),
                    "end": position_of(&before, e, encoding).to_json()}, "text": text})],
                None => Vec::new(),
            };
        }
        for p in problems {
            self.violation(p);
        }
        self.emit(&de.uri, changes);
    }
}

struct DocEdit {
    uri: String,
    version: Option<i64>,
    edits: Vec<(Value, String)>,
}

/// Replaces `[start, end)` of a buffer, moves its cursors, and returns the content change that
/// describes it (range in the text before the change).
fn replace_in(doc: &mut Doc, start: usize, end: usize, text: &str, encoding: Encoding) -> Value {
    let change = json!({"range": {
        "start": position_of(&doc.text, start, encoding).to_json(),
        "end": position_of(&doc.text, end, encoding).to_json()}, "text": text});
    doc.text.replace_range(start..end, text);
    for c in doc.cursors.values_mut() {
        *c = map_cursor(*c, start, end, text.len());
    }
    change
}

// ---------------------------------------------------------------------------------------------
// The editor.

/// How to start a [`FakeEditor`].
pub struct EditorBuilder {
    kind: Kind,
    label: String,
    env: Vec<(String, String)>,
    init_options: Option<Value>,
    encodings: Option<Option<Vec<String>>>,
    debounce: Duration,
    root_uri: bool,
    files: Vec<(String, String)>,
    typing_delay: Duration,
}

impl EditorBuilder {
    /// Joins through `DUET_INVITE`.
    pub fn invite(self, invite: &str) -> Self {
        self.env("DUET_INVITE", invite)
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn init_options(mut self, options: Value) -> Self {
        self.init_options = Some(options);
        self
    }

    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// Offers exactly these position encodings (`None`: the field is left out).
    pub fn position_encodings(mut self, encodings: Option<&[&str]>) -> Self {
        self.encodings = Some(encodings.map(|e| e.iter().map(|s| s.to_string()).collect()));
        self
    }

    /// Neovim's `debounce_text_changes` (150 ms unless set).
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// `rootUri: null` and no workspace folders (Helix with no root marker); the bridge starts
    /// in the workspace directory.
    pub fn no_root(mut self) -> Self {
        self.root_uri = false;
        self
    }

    /// A file written into the workspace before the bridge starts (e.g. `.duet.toml`).
    pub fn file(mut self, path: &str, text: &str) -> Self {
        self.files.push((path.to_string(), text.to_string()));
        self
    }

    /// Pause between typed characters in [`FakeEditor::type_text`] (default: none, only a yield).
    pub fn typing_delay(mut self, delay: Duration) -> Self {
        self.typing_delay = delay;
        self
    }

    /// Starts the bridge, and initializes it.
    pub async fn start(self) -> FakeEditor {
        FakeEditor::spawn(self).await
    }

    /// Starts the bridge with `room`'s invite (`DUET_INVITE`), waits until it is connected,
    /// and opens `path` with the room's text, as a person joining an existing session would.
    pub async fn join(self, server: &Server, room: &RoomRef, path: &str) -> FakeEditor {
        let editor = self.invite(&server.ws_url(room)).start().await;
        editor.wait_connected(WAIT).await;
        let text = server.file(room, path).await.unwrap_or_default();
        editor.open(path, &text);
        editor
    }
}

pub struct FakeEditor {
    pub kind: Kind,
    pub label: String,
    state: Arc<Mutex<State>>,
    child: Mutex<Child>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: TempDir,
    workspace: PathBuf,
    /// The bridge's `InitializeResult`.
    pub init_result: Value,
    typing_delay: Duration,
}

impl Drop for FakeEditor {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
        if let Ok(mut child) = self.child.lock() {
            let _ = child.start_kill();
        }
    }
}

impl FakeEditor {
    pub fn builder(kind: Kind) -> EditorBuilder {
        EditorBuilder {
            kind,
            label: kind.name().to_string(),
            env: Vec::new(),
            init_options: None,
            encodings: None,
            debounce: Duration::from_millis(150),
            root_uri: true,
            files: Vec::new(),
            typing_delay: Duration::ZERO,
        }
    }

    /// An editor whose bridge joins `invite` through `DUET_INVITE`.
    pub async fn start(kind: Kind, invite: &str) -> FakeEditor {
        FakeEditor::builder(kind).invite(invite).start().await
    }

    /// An editor in `room`, connected, with `path` open (its text taken from the server).
    pub async fn joined(
        kind: Kind,
        label: &str,
        server: &Server,
        room: &RoomRef,
        path: &str,
    ) -> FakeEditor {
        FakeEditor::builder(kind)
            .label(label)
            .join(server, room, path)
            .await
    }

    async fn spawn(b: EditorBuilder) -> FakeEditor {
        let dir = TempDir::new(&format!("editor-{}", b.label));
        let workspace = dir.0.join("ws");
        let home = dir.0.join("home");
        std::fs::create_dir_all(&workspace).expect("workspace dir");
        std::fs::create_dir_all(&home).expect("home dir");
        for (path, text) in &b.files {
            write_file(&workspace.join(path), text);
        }
        let log = std::fs::File::create(dir.0.join("bridge.log")).expect("bridge log");
        let mut cmd = Command::new(binary("duet-lsp"));
        cmd.current_dir(&workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for key in [
            "DUET_SERVER",
            "DUET_ROOM",
            "DUET_TOKEN",
            "DUET_INVITE",
            "DUET_NAME",
            "DUET_COLOR",
            "DUET_LOG_FILE",
        ] {
            cmd.env_remove(key);
        }
        cmd.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("DUET_LOG", "info,duet_lsp=debug")
            .env("DUET_NAME", &b.label);
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start duet-lsp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let state = Arc::new_cyclic(|me| {
            Mutex::new(State {
                kind: b.kind,
                label: b.label.clone(),
                me: me.clone(),
                out,
                started: Instant::now(),
                encoding: Encoding::Utf16,
                full_sync: false,
                debounce: if b.kind == Kind::Neovim {
                    b.debounce
                } else {
                    Duration::ZERO
                },
                root: workspace.clone(),
                docs: HashMap::new(),
                next_id: 1,
                next_cursor: 1,
                waiters: HashMap::new(),
                received: Vec::new(),
                held: false,
                held_queue: VecDeque::new(),
                stats: Stats::default(),
                trace: VecDeque::new(),
                trace_dropped: 0,
                violations: Vec::new(),
                exited: false,
                status_line: None,
                shown: None,
            })
        });
        let writer = tokio::spawn(async move {
            let mut stdin = stdin;
            while let Some(frame) = out_rx.recv().await {
                if stdin.write_all(&frame).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(read_loop(stdout, state.clone()));
        let mut editor = FakeEditor {
            kind: b.kind,
            label: b.label.clone(),
            state,
            child: Mutex::new(child),
            tasks: vec![writer, reader],
            dir,
            workspace: workspace.clone(),
            init_result: Value::Null,
            typing_delay: b.typing_delay,
        };

        let root = b.root_uri.then(|| file_uri(&workspace));
        let encodings = b.encodings.unwrap_or_else(|| b.kind.offered_encodings());
        let mut capabilities = json!({
            "workspace": {
                "applyEdit": true,
                "workspaceEdit": {"documentChanges": true, "failureHandling": "abort"},
                "executeCommand": {"dynamicRegistration": false},
                "workspaceFolders": true,
                "configuration": true,
            },
            "textDocument": {
                "synchronization": {"dynamicRegistration": false, "didSave": true, "willSave": false},
                "completion": {"completionItem": {"snippetSupport": b.kind != Kind::Neovim,
                    "insertReplaceSupport": b.kind != Kind::Neovim}},
                "publishDiagnostics": {"versionSupport": true},
            },
            "window": {"workDoneProgress": true, "showDocument": {"support": true},
                "showMessage": {"messageActionItem": {"additionalPropertiesSupport": false}}},
        });
        if let Some(encodings) = encodings {
            capabilities["general"] = json!({"positionEncodings": encodings});
        }
        let mut params = json!({
            "processId": std::process::id(),
            "clientInfo": b.kind.client_info(),
            "rootUri": root,
            "rootPath": b.root_uri.then(|| workspace.display().to_string()),
            "workspaceFolders": match &root {
                Some(uri) => json!([{"uri": uri, "name": "ws"}]),
                None => json!([]),
            },
            "capabilities": capabilities,
            "trace": "off",
        });
        if let Some(options) = b.init_options {
            params["initializationOptions"] = options;
        }
        let result = match editor
            .try_request("initialize", params, Duration::from_secs(20))
            .await
        {
            Some(Ok(result)) => result,
            Some(Err(e)) => panic!("initialize failed: {e}\n{}", editor.report()),
            None => panic!(
                "duet-lsp did not answer initialize within 20 s\n{}",
                editor.report()
            ),
        };
        {
            let mut s = editor.lock();
            let caps = &result["capabilities"];
            s.encoding = caps["positionEncoding"]
                .as_str()
                .and_then(Encoding::from_name)
                .unwrap_or(Encoding::Utf16);
            let sync = caps["textDocumentSync"]
                .as_i64()
                .or_else(|| caps["textDocumentSync"]["change"].as_i64());
            s.full_sync = sync == Some(1);
            s.notify("initialized", json!({}));
        }
        editor.init_result = result;
        editor
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("editor state")
    }

    // --- facts ---------------------------------------------------------------------------------

    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    pub fn uri(&self, path: &str) -> String {
        self.lock().uri(path)
    }

    pub fn encoding(&self) -> Encoding {
        self.lock().encoding
    }

    pub fn text(&self, path: &str) -> String {
        self.lock().doc(path).text.clone()
    }

    pub fn version(&self, path: &str) -> i64 {
        self.lock().doc(path).version
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Notifications and requests the bridge sent, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// How many messages have been received so far (a mark for `*_after` waits).
    pub fn mark(&self) -> usize {
        self.lock().received.len()
    }

    /// `window/showMessage` and `window/showMessageRequest` params, in order.
    pub fn messages(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| is_message(&r.method))
            .map(|r| r.params)
            .collect()
    }

    /// The state of the last `duet/status` notification.
    pub fn status(&self) -> Option<String> {
        self.lock()
            .received
            .iter()
            .rev()
            .find(|r| r.method == "duet/status")
            .and_then(|r| r.params["state"].as_str().map(str::to_owned))
    }

    /// What the bridge logged: on stderr, and (under Helix) in the file beside `helix.log`.
    pub fn log(&self) -> String {
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        read(self.dir.0.join("bridge.log")) + &read(self.helix_log_file())
    }

    /// Only what the bridge wrote on stderr (Helix shows each line of it as an error).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("bridge.log")).unwrap_or_default()
    }

    /// Where the bridge logs under Helix: beside `helix.log` in Helix's cache directory.
    pub fn helix_log_file(&self) -> PathBuf {
        self.dir.0.join("home/.cache/helix/duet-lsp.log")
    }

    /// Whether the bridge process is still running.
    pub fn alive(&self) -> bool {
        matches!(self.child.lock().expect("child").try_wait(), Ok(None))
    }

    pub fn position(&self, path: &str, char_offset: usize) -> Pos {
        let s = self.lock();
        let text = &s.doc(path).text;
        position_of(text, char_to_byte(text, char_offset), s.encoding)
    }

    /// The last `lines` of the message trace.
    pub fn trace_tail(&self, lines: usize) -> String {
        let s = self.lock();
        let skip = s.trace.len().saturating_sub(lines);
        s.trace
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes the whole trace (up to its last 20,000 lines) and the bridge's log to
    /// `target/bridge-traces/`, and returns the file's path.
    pub fn dump(&self) -> PathBuf {
        let dir = crate::workspace().join("target/bridge-traces");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!(
            "{}-{}-{}.txt",
            self.label,
            self.kind.name(),
            uuid::Uuid::new_v4()
        ));
        let (trace, dropped, texts) = {
            let s = self.lock();
            let texts: Vec<String> = s
                .docs
                .values()
                .map(|d| format!("{} (version {}): {:?}", d.path, d.version, d.text))
                .collect();
            (
                s.trace.iter().cloned().collect::<Vec<_>>().join("\n"),
                s.trace_dropped,
                texts.join("\n"),
            )
        };
        let body = format!(
            "{} ({})\nbuffers:\n{texts}\n---- LSP trace ({dropped} earlier lines dropped)\n{trace}\n---- bridge log\n{}",
            self.label,
            self.kind.name(),
            self.log()
        );
        let _ = std::fs::write(&path, body);
        path
    }

    /// Everything useful after a failure: stats, violations, the trace and the bridge's log.
    pub fn report(&self) -> String {
        let (stats, violations, status) = {
            let s = self.lock();
            (s.stats.clone(), s.violations.clone(), s.exited)
        };
        let log = self.log();
        let log_tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "---- {} ({}), encoding {}, bridge alive: {}, stdout closed: {status}\nfull trace: {}\nstats: {stats:?}\nviolations: {violations:#?}\n---- LSP trace (last 80):\n{}\n---- bridge log (last 40 lines):\n{}\n----",
            self.label,
            self.kind.name(),
            self.encoding().name(),
            self.alive(),
            self.dump().display(),
            self.trace_tail(80),
            log_tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        )
    }

    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "{}: contract violations\n{}",
            self.label,
            self.report()
        );
    }

    // --- requests ------------------------------------------------------------------------------

    /// Sends a request and waits up to `timeout`; `None` if no answer came.
    pub async fn try_request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Option<Result<Value, Value>> {
        let rx = self.lock().request(method, params);
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => Some(match response.get("error") {
                Some(error) => Err(error.clone()),
                None => Ok(response.get("result").cloned().unwrap_or(Value::Null)),
            }),
            _ => None,
        }
    }

    /// Sends a request; panics with the trace if no answer comes within [`WAIT`].
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, Value> {
        match self.try_request(method, params, WAIT).await {
            Some(r) => r,
            None => panic!(
                "{}: no answer to {method} within {WAIT:?}\n{}",
                self.label,
                self.report()
            ),
        }
    }

    pub fn notify(&self, method: &str, params: Value) {
        self.lock().notify(method, params);
    }

    pub async fn execute_command(&self, command: &str, arguments: Value) -> Result<Value, Value> {
        self.request(
            "workspace/executeCommand",
            json!({"command": command, "arguments": arguments}),
        )
        .await
    }

    /// `duet.undo` or `duet.redo` of `steps` steps in `path`, as this editor runs it: VS Code
    /// and Neovim pass the document and the count; Helix's keymap (`editors/helix/config.toml`)
    /// passes nothing, once per step, and the bridge takes the document last typed in. Returns
    /// how many steps were done.
    pub async fn history(&self, command: &str, path: &str, steps: u64) -> u64 {
        let runs = if self.kind == Kind::Helix {
            vec![json!([]); steps as usize]
        } else {
            vec![json!([self.uri(path), steps])]
        };
        let key = if command == "duet.undo" {
            "undone"
        } else {
            "redone"
        };
        let mut done = 0;
        for arguments in runs {
            let result = self
                .execute_command(command, arguments)
                .await
                .unwrap_or_else(|e| panic!("{}: {command}: {e}\n{}", self.label, self.report()));
            done += result[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{command} answered {result}"));
        }
        done
    }

    /// `textDocument/completion` at a character offset.
    pub async fn completion(&self, path: &str, char_offset: usize) -> Value {
        let (uri, pos) = (self.uri(path), self.position(path, char_offset));
        let params = json!({"textDocument": {"uri": uri}, "position": pos.to_json(),
            "context": {"triggerKind": 1}});
        match self.request("textDocument/completion", params).await {
            Ok(v) => v,
            Err(e) => panic!("{}: completion failed: {e}\n{}", self.label, self.report()),
        }
    }

    /// Helix: the workspace-symbol picker's entries for `query` (`workspace/symbol`).
    pub async fn workspace_symbols(&self, query: &str) -> Vec<Value> {
        match self
            .request("workspace/symbol", json!({ "query": query }))
            .await
        {
            Ok(Value::Array(symbols)) => symbols,
            Ok(Value::Null) => Vec::new(),
            Ok(other) => panic!("{}: workspace/symbol answered {other}", self.label),
            Err(e) => panic!(
                "{}: workspace/symbol failed: {e}\n{}",
                self.label,
                self.report()
            ),
        }
    }

    /// Helix: picks a symbol in the picker, which opens its file at its range.
    pub fn pick_symbol(&self, symbol: &Value) {
        let location = &symbol["location"];
        let uri = location["uri"].as_str().expect("a symbol's location URI");
        let at = parse_pos(&location["range"]["start"]).unwrap_or(Pos::new(0, 0));
        assert!(
            self.lock().show(uri, at),
            "{}: cannot open {uri}",
            self.label
        );
    }

    /// Helix: what the status line shows now (the last message, until a keystroke).
    pub fn status_line(&self) -> Option<String> {
        self.lock().status_line.clone()
    }

    /// The workspace path and cursor of the document last put in front (`showDocument`, a
    /// picked symbol).
    pub fn shown(&self) -> Option<(String, Pos)> {
        self.lock().shown.clone()
    }

    /// Whether a document is open.
    pub fn is_open(&self, path: &str) -> bool {
        let s = self.lock();
        s.docs.contains_key(&s.uri(path))
    }

    /// `shutdown` then `exit` with stdin left open (as editors may); waits 5 s for the process
    /// to end, then closes stdin and waits 3 s more, then kills it.
    pub async fn shutdown(&self) -> Shutdown {
        let answered = self
            .try_request("shutdown", Value::Null, Duration::from_secs(5))
            .await
            .is_some_and(|r| r.is_ok());
        self.notify("exit", Value::Null);
        let exited = |within: Duration| async move {
            let deadline = Instant::now() + within;
            loop {
                let status = self.child.lock().expect("child").try_wait().ok().flatten();
                if let Some(status) = status {
                    return Some(status);
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let mut result = Shutdown {
            answered,
            ..Shutdown::default()
        };
        if let Some(status) = exited(Duration::from_secs(5)).await {
            result.exited_on_exit = true;
            result.success = status.success();
            return result;
        }
        // Does it wait for stdin to close?
        self.tasks[0].abort();
        if let Some(status) = exited(Duration::from_secs(3)).await {
            result.exited_after_stdin_closed = true;
            result.success = status.success();
        } else {
            let _ = self.child.lock().expect("child").start_kill();
        }
        result
    }

    // --- what the user does -------------------------------------------------------------------

    /// Opens a file: writes it into the workspace (as it is on disk) and sends `didOpen`.
    pub fn open(&self, path: &str, text: &str) {
        write_file(&self.workspace.join(path), text);
        self.lock().open(path, text);
    }

    pub fn close(&self, path: &str) {
        let mut s = self.lock();
        let uri = s.uri(path);
        s.send_pending(&uri);
        s.docs.remove(&uri);
        s.notify(
            "textDocument/didClose",
            json!({"textDocument": {"uri": uri}}),
        );
    }

    /// Types `text` one character per `didChange`, like a person, at a cursor placed at
    /// `char_offset` that moves with the edits applied meanwhile.
    pub async fn type_text(&self, path: &str, char_offset: usize, text: &str) {
        let cursor = self.place_cursor(path, char_offset);
        self.type_at(path, cursor, text).await;
        self.remove_cursor(path, cursor);
    }

    /// A cursor at a character offset that moves with every edit (remote ones included), for
    /// typing in several goes at the same place.
    pub fn place_cursor(&self, path: &str, char_offset: usize) -> u64 {
        let mut s = self.lock();
        let id = s.next_cursor;
        s.next_cursor += 1;
        let doc = s.doc_mut(path);
        let at = char_to_byte(&doc.text, char_offset);
        doc.cursors.insert(id, at);
        id
    }

    pub fn remove_cursor(&self, path: &str, cursor: u64) {
        self.lock().doc_mut(path).cursors.remove(&cursor);
    }

    /// A cursor's character offset now.
    pub fn cursor_offset(&self, path: &str, cursor: u64) -> usize {
        let s = self.lock();
        let doc = s.doc(path);
        doc.text[..doc.cursors[&cursor]].chars().count()
    }

    /// Types at a cursor, one `didChange` per character (the cursor ends after the text).
    pub async fn type_at(&self, path: &str, cursor: u64, text: &str) {
        for c in text.chars() {
            {
                let mut s = self.lock();
                let at = s.doc(path).cursors[&cursor];
                s.user_edit(path, vec![(at, at, c.to_string())]);
                s.doc_mut(path).cursors.insert(cursor, at + c.len_utf8());
            }
            if self.typing_delay.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(self.typing_delay).await;
            }
        }
    }

    /// Types at the end of the file, one `didChange` per character, with no pause at all (all
    /// notifications go out back to back).
    pub fn type_burst_at_end(&self, path: &str, text: &str) {
        let mut s = self.lock();
        for c in text.chars() {
            let at = s.doc(path).text.len();
            s.user_edit(path, vec![(at, at, c.to_string())]);
        }
    }

    /// Inserts `text` at a character offset: one edit, one `didChange`.
    pub fn insert(&self, path: &str, char_offset: usize, text: &str) {
        self.replace(path, char_offset, char_offset, text);
    }

    /// Types half a character at a character offset, as Neovim does with its cursor inside a
    /// multibyte character: the `didChange` carries a byte that is not UTF-8 (0xC3). The
    /// editor's own text shows U+FFFD there.
    pub fn insert_invalid_utf8(&self, path: &str, char_offset: usize) {
        const PLACEHOLDER: &str = "@invalid@";
        let mut s = self.lock();
        let (uri, encoding) = (s.uri(path), s.encoding);
        let doc = s.doc_mut(path);
        let at = char_to_byte(&doc.text, char_offset);
        let position = position_of(&doc.text, at, encoding).to_json();
        doc.text.insert(at, char::REPLACEMENT_CHARACTER);
        doc.version += 1;
        let message = json!({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
            "textDocument": {"uri": uri, "version": doc.version},
            "contentChanges": [{"range": {"start": position, "end": position}, "text": PLACEHOLDER}]}});
        let body = message.to_string();
        s.trace("->", &body);
        let (before, after) = body.split_once(PLACEHOLDER).expect("placeholder");
        s.send_body([before.as_bytes(), &[0xc3], after.as_bytes()].concat());
    }

    /// Deletes characters `[start, end)`.
    pub fn delete(&self, path: &str, start: usize, end: usize) {
        self.replace(path, start, end, "");
    }

    /// Replaces characters `[start, end)` with `text`.
    pub fn replace(&self, path: &str, start: usize, end: usize, text: &str) {
        self.edit_many(path, &[(start, end, text)]);
    }

    /// Several cursors at once: non-overlapping character ranges of the current text, one
    /// transaction and one `didChange` with one change per range.
    pub fn edit_many(&self, path: &str, edits: &[(usize, usize, &str)]) {
        let mut s = self.lock();
        let text = &s.doc(path).text;
        let edits = edits
            .iter()
            .map(|(a, b, t)| {
                (
                    char_to_byte(text, *a),
                    char_to_byte(text, *b),
                    t.to_string(),
                )
            })
            .collect();
        s.user_edit(path, edits);
    }

    /// Decides and makes an edit atomically (no remote edit can slip in between): `choose` sees
    /// the current text and returns character ranges to replace, or nothing.
    pub fn edit_with(
        &self,
        path: &str,
        choose: impl FnOnce(&str) -> Vec<(usize, usize, String)>,
    ) -> bool {
        let mut s = self.lock();
        let text = &s.doc(path).text;
        let edits: Vec<(usize, usize, String)> = choose(text)
            .into_iter()
            .map(|(a, b, t)| (char_to_byte(text, a), char_to_byte(text, b), t))
            .collect();
        if edits.is_empty() {
            return false;
        }
        s.user_edit(path, edits);
        true
    }

    /// Sends a change with exactly this `range` (e.g. out of range); the buffer applies it the
    /// way LSP says (a character past the line's end means the line's end; a line past the end
    /// means the end of the document).
    pub fn change_raw(&self, path: &str, range: Value, text: &str) {
        let mut s = self.lock();
        let encoding = s.encoding;
        let uri = s.uri(path);
        let doc = s.doc_mut(path);
        let start = parse_pos(&range["start"]).expect("range.start");
        let end = parse_pos(&range["end"]).expect("range.end");
        let a = resolve(&doc.text, start, encoding).offset;
        let b = resolve(&doc.text, end, encoding).offset.max(a);
        replace_in(doc, a, b, text, encoding);
        doc.version += 1;
        s.send_did_change(&uri, vec![json!({"range": range, "text": text})]);
    }

    // --- timing control ---------------------------------------------------------------------

    /// From now on, `applyEdit` requests are "still on their way": queued, not processed, until
    /// [`FakeEditor::release_apply_edits`]. Makes "the user types while a remote edit is in
    /// flight" deterministic. Keep it short: the bridge may time out an edit it waits for.
    pub fn hold_apply_edits(&self) {
        self.lock().held = true;
    }

    /// Processes the held `applyEdit`s in order (against whatever the buffer is now).
    pub fn release_apply_edits(&self) {
        self.lock().release();
    }

    pub async fn wait_held_apply_edits(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lock().held_queue.len() < count {
            if Instant::now() > deadline {
                panic!(
                    "{}: expected {count} applyEdit on its way within {timeout:?}\n{}",
                    self.label,
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Helix: the version moves by `n` without a `didChange` (completion previews).
    pub fn helix_skip_versions(&self, path: &str, n: i64) {
        self.lock().doc_mut(path).version += n;
    }

    /// Helix: requests completion at `char_offset`, saving the document state first (as Helix
    /// does, to restore it for the preview). Returns the completion result.
    pub async fn helix_begin_completion(&self, path: &str, char_offset: usize) -> Value {
        {
            let mut s = self.lock();
            let doc = s.doc_mut(path);
            doc.helix_saved = Some(doc.text.clone());
        }
        self.completion(path, char_offset).await
    }

    /// Helix: the text saved at the last completion request, until an item is accepted.
    pub fn helix_saved(&self, path: &str) -> Option<String> {
        self.lock().doc(path).helix_saved.clone()
    }

    /// Helix: the user accepts an item replacing characters `[start, end)` *of the saved text*
    /// with `insert`. The buffer goes back to the saved state (any peer edit applied since
    /// vanishes, with no `didChange`), the preview bumps the version twice without a
    /// `didChange`, then ONE change is sent that turns what the bridge last heard into the saved
    /// text plus the completion — i.e. it deletes the peer's edit and inserts the completion.
    pub fn helix_accept_completion(&self, path: &str, start: usize, end: usize, insert: &str) {
        let mut s = self.lock();
        let encoding = s.encoding;
        let uri = s.uri(path);
        let doc = s.doc_mut(path);
        let saved = doc
            .helix_saved
            .take()
            .expect("helix_begin_completion first");
        let (a, b) = (char_to_byte(&saved, start), char_to_byte(&saved, end));
        let mut accepted = saved.clone();
        accepted.replace_range(a..b, insert);
        let before = std::mem::replace(&mut doc.text, accepted);
        doc.version += 2;
        doc.version += 1;
        let changes = match char_diff(&before, &doc.text) {
            Some((s0, e0, text)) => vec![json!({"range": {
                "start": position_of(&before, s0, encoding).to_json(),
                "end": position_of(&before, e0, encoding).to_json()}, "text": text})],
            None => Vec::new(),
        };
        if !changes.is_empty() {
            s.send_did_change(&uri, changes);
        }
    }

    /// The whole hazard: completion requested, `during` runs (a peer's edit arriving), the user
    /// accepts replacing `[start, end)` of the saved text with `insert`.
    pub async fn helix_completion_preview_revert(
        &self,
        path: &str,
        char_offset: usize,
        replace: (usize, usize),
        insert: &str,
        during: impl std::future::Future<Output = ()>,
    ) -> Value {
        let items = self.helix_begin_completion(path, char_offset).await;
        during.await;
        self.helix_accept_completion(path, replace.0, replace.1, insert);
        items
    }

    // --- waits ----------------------------------------------------------------------------------

    pub async fn wait_text(&self, path: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(path);
            if text == expected {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: timed out after {timeout:?} waiting for {path} to read\n  {expected:?}\nit reads\n  {text:?}\n{}",
                    self.label,
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for a message received after `mark` for which `matches(method, params)`.
    pub async fn wait_received_after(
        &self,
        mark: usize,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str, &Value) -> bool,
    ) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .lock()
                .received
                .iter()
                .skip(mark)
                .find(|r| matches(&r.method, &r.params))
                .cloned();
            if let Some(found) = found {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what}\nmessages shown: {:#?}\n{}",
                    self.label,
                    self.messages(),
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for a `window/showMessage` (or `showMessageRequest`) whose params match.
    pub async fn wait_message(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_received_after(0, what, timeout, |m, p| is_message(m) && matches(p))
            .await
            .params
    }

    /// Waits until the last `duet/status` says `connected`.
    pub async fn wait_connected(&self, timeout: Duration) {
        self.wait_status(&["connected"], timeout).await
    }

    /// Waits until the last `duet/status` state is one of `states`.
    pub async fn wait_status(&self, states: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if status.as_deref().is_some_and(|s| states.contains(&s)) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: timed out after {timeout:?} waiting for duet/status {states:?} (last: {status:?})\nmessages shown: {:#?}\n{}",
                    self.label,
                    self.messages(),
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn is_message(method: &str) -> bool {
    method == "window/showMessage" || method == "window/showMessageRequest"
}

fn write_file(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dirs");
    }
    std::fs::write(path, text).expect("write file");
}

async fn read_frame(reader: &mut BufReader<ChildStdout>) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let header = String::from_utf8_lossy(&line);
        let header = header.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        match header.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("content-length") => {
                length = value.trim().parse::<usize>().ok();
            }
            Some(_) => {}
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not an LSP header line on stdout: {header:?}"),
                ))
            }
        }
    }
    let length = length.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "LSP frame without Content-Length",
        )
    })?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(body))
}

async fn read_loop(stdout: ChildStdout, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let frame = read_frame(&mut reader).await;
        let mut s = state.lock().expect("editor state");
        match frame {
            Ok(Some(body)) => match serde_json::from_slice::<Value>(&body) {
                Ok(message) => s.dispatch(message),
                Err(e) => s.violation(format!(
                    "stdout frame is not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                )),
            },
            Ok(None) => {
                s.exited = true;
                s.trace("<-", "EOF on stdout");
                s.waiters.clear();
                return;
            }
            Err(e) => {
                s.violation(format!("stdout is not LSP: {e}"));
                s.exited = true;
                s.waiters.clear();
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks over several editors.

/// Waits until every editor's buffer of `path` and the server's copy are the same text, and
/// returns it; then checks that no editor saw a contract violation.
pub async fn converge(
    server: &Server,
    room: &RoomRef,
    path: &str,
    editors: &[&FakeEditor],
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let served = server.file(room, path).await;
        let texts: Vec<String> = editors.iter().map(|e| e.text(path)).collect();
        if let Some(served) = &served {
            if texts.iter().all(|t| t == served) {
                for e in editors {
                    e.assert_no_violations();
                }
                return served.clone();
            }
        }
        if Instant::now() > deadline {
            let log = server.log();
            let log_tail: Vec<&str> = log.lines().rev().take(30).collect();
            let mut report = format!(
                "---- server log (last 30 lines)\n{}\nserver: {served:?}\n",
                log_tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            for (e, t) in editors.iter().zip(&texts) {
                report.push_str(&format!("{} ({}): {t:?}\n", e.label, e.kind.name()));
            }
            for e in editors {
                report.push_str(&e.report());
                report.push('\n');
            }
            panic!("{path} did not converge within {timeout:?}\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server's copy of `path` is `expected`.
pub async fn wait_server_file(
    server: &Server,
    room: &RoomRef,
    path: &str,
    expected: &str,
    timeout: Duration,
    editors: &[&FakeEditor],
) {
    let deadline = Instant::now() + timeout;
    loop {
        let served = server.file(room, path).await;
        if served.as_deref() == Some(expected) {
            return;
        }
        if Instant::now() > deadline {
            let reports: Vec<String> = editors.iter().map(|e| e.report()).collect();
            panic!(
                "the server's {path} did not become\n  {expected:?}\nwithin {timeout:?}; it is\n  {served:?}\n{}",
                reports.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per character of `text`: whether it belongs to a marker `«…»` (the randomized tests insert
/// such markers and check that each survives whole).
pub fn marker_mask(text: &[char]) -> Vec<bool> {
    let mut inside = false;
    text.iter()
        .map(|&c| {
            if c == '«' {
                inside = true;
            }
            let here = inside;
            if c == '»' {
                inside = false;
            }
            here
        })
        .collect()
}

/// Asserts that `piece` occurs exactly once in `text`.
pub fn assert_once(text: &str, piece: &str) {
    let n = text.matches(piece).count();
    assert_eq!(n, 1, "{piece:?} occurs {n} times in {text:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_in_every_encoding() {
        let text = "a🎉b世\r\nx\ry\n";
        for enc in [Encoding::Utf8, Encoding::Utf16, Encoding::Utf32] {
            for (offset, _) in text.char_indices().chain([(text.len(), ' ')]) {
                if text.as_bytes().get(offset.wrapping_sub(1)) == Some(&b'\r')
                    && text.as_bytes().get(offset) == Some(&b'\n')
                {
                    continue;
                }
                let pos = position_of(text, offset, enc);
                let r = resolve(text, pos, enc);
                assert_eq!(r.offset, offset, "{enc:?} {pos:?}");
                assert!(!r.inside_char && !r.out_of_range);
            }
        }
        assert_eq!(position_of(text, 5, Encoding::Utf16), Pos::new(0, 3));
        assert_eq!(position_of(text, 5, Encoding::Utf8), Pos::new(0, 5));
        assert_eq!(position_of(text, 5, Encoding::Utf32), Pos::new(0, 2));
        assert!(resolve(text, Pos::new(0, 2), Encoding::Utf16).inside_char);
        assert!(resolve(text, Pos::new(0, 10), Encoding::Utf8).out_of_range);
        assert_eq!(resolve(text, Pos::new(1, 0), Encoding::Utf8).offset, 11);
        assert_eq!(resolve(text, Pos::new(2, 0), Encoding::Utf8).offset, 13);
        assert_eq!(
            resolve(text, Pos::new(9, 0), Encoding::Utf8).offset,
            text.len()
        );
    }

    #[test]
    fn line_diff_replaces_whole_lines() {
        assert_eq!(
            line_diff("a\nb\nc", "a\nbX\nc"),
            Some((2, 4, "bX\n".to_string()))
        );
        assert_eq!(
            line_diff("a\nb", "a\nb\nc"),
            Some((2, 3, "b\nc".to_string()))
        );
        let (s, e, t) = line_diff("x\n", "").unwrap();
        assert_eq!((s, e, t.as_str()), (0, 2, ""));
        assert_eq!(char_diff("abXcd", "abYcd"), Some((2, 3, "Y".to_string())));
        assert_eq!(char_diff("P🎉q", "🎉"), Some((0, 6, "🎉".to_string())));
    }
}
