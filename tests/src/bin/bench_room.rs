//! Room benchmarks, against a real `duet-server` (and real `duet-lsp` bridges where the figure
//! is about editors):
//!
//! - bytes on the wire per keystroke, on 1 KB, 100 KB and 1 MB files, beside the file's size
//!   (what the prototypes' full-text sync sends per keystroke): each peer through its own
//!   counting TCP proxy, so WebSocket framing, presence and keepalive pings are all counted;
//! - join time for a room with one 1 MB file and for one with 200 files of 5 KB: a bridge from
//!   its start until the files its editor opens hold the room's text, and a raw Yjs client
//!   until it is synced;
//! - server memory (RSS) per loaded idle room and per connected peer;
//! - database writes per second per active room under steady typing, on SQLite and
//!   PostgreSQL, beside one write per keystroke.
//!
//! Every figure is the median over `--runs` runs (min–max beside it). Everything typed must
//! arrive, and the server must store exactly what was typed.
//!
//! `cargo run --release -p duet-e2e --bin bench-room [-- --quick] [--runs N]`

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use duet_e2e::editor::{FakeEditor, Kind};
use duet_e2e::pg::Cluster;
use duet_e2e::proxy::Proxy;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::stats::{machine, source, Args, Runs};
use duet_e2e::yclient::YClient;
use serde_json::json;

const FILE: &str = "main.py";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("{}", machine());
    println!(
        "{} runs; each figure is the median of the runs (min–max over runs)",
        args.runs
    );
    wire(&args).await;
    join(&args).await;
    memory(&args).await;
    writes(&args).await;
}

fn invite(port: u16, room: &RoomRef) -> String {
    format!("ws://127.0.0.1:{port}/ws/{}?token={}", room.id, room.token)
}

/// A new room holding `files`.
async fn room_with(server: &Server, files: &[(String, String)]) -> RoomRef {
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    server.create_room_with(&files).await
}

// ---------------------------------------------------------------------------------------------
// Bytes on the wire.

const SIZES: [(&str, usize); 3] = [("1 KB", 1 << 10), ("100 KB", 100 << 10), ("1 MB", 1 << 20)];
/// 20 keystrokes a second: a fast typist, slow enough that the bridge sends each on its own.
const KEY_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq)]
enum Typist {
    /// Bridges whose editor sends `duet/cursor` (our VS Code and Neovim plugins do): A after
    /// every keystroke, B once when it opens the file.
    Plugin,
    /// Bridges whose editor never sends `duet/cursor` (Helix): the bridge takes the cursor
    /// from the edits.
    NoPlugin,
    /// Raw Yjs clients: CRDT updates only, no presence, no pings.
    Yjs,
}

impl Typist {
    const ALL: [Typist; 3] = [Typist::Plugin, Typist::NoPlugin, Typist::Yjs];

    fn label(self) -> &'static str {
        match self {
            Typist::Plugin => "bridges, editor sends duet/cursor",
            Typist::NoPlugin => "bridges, no duet/cursor (Helix)",
            Typist::Yjs => "raw Yjs clients, no presence",
        }
    }
}

/// Bytes per keystroke: [A up, B down, A down, B up].
type Traffic = [f64; 4];

async fn wire(args: &Args) {
    let keys = args.pick(60, 20);
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let mut figures: BTreeMap<(usize, usize), [Runs; 4]> = BTreeMap::new();
    let mut idle = Runs::default();
    for run in 1..=args.runs {
        for (s, &(label, size)) in SIZES.iter().enumerate() {
            for (t, &typist) in Typist::ALL.iter().enumerate() {
                eprintln!("run {run}/{}: wire, {label}, {}", args.runs, typist.label());
                let (traffic, idle_rate) =
                    wire_run(&server, size, typist, keys, (s, t) == (0, 0)).await;
                if let Some(rate) = idle_rate {
                    idle.push(rate);
                }
                let entry = figures.entry((s, t)).or_default();
                for (runs, value) in entry.iter_mut().zip(traffic) {
                    runs.push(value);
                }
            }
        }
    }
    println!(
        "\nbytes on the wire per keystroke: A types {keys} single characters, one every {} ms, \
         in the middle of the file; B only watches. Each peer reaches the server through its \
         own TCP proxy: every byte counted (WebSocket frames, Yjs updates, presence, pings). \
         Scripted VS Code editors.",
        KEY_INTERVAL.as_millis()
    );
    println!(
        "{:<8} {:<34} {:>18} {:>18} {:>16} {:>16} {:>15} {:>9}",
        "file",
        "peers",
        "A up B/key",
        "B down B/key",
        "A down B/key",
        "B up B/key",
        "full text B/key",
        "up/full"
    );
    for ((s, t), runs) in &figures {
        let (label, size) = SIZES[*s];
        println!(
            "{:<8} {:<34} {:>18} {:>18} {:>16} {:>16} {:>15} {:>8.4}%",
            label,
            Typist::ALL[*t].label(),
            runs[0].show(1),
            runs[1].show(1),
            runs[2].show(1),
            runs[3].show(1),
            size,
            runs[0].median() / size as f64 * 100.0
        );
    }
    println!(
        "(full text: what a full-text sync sends per keystroke, up and again down to each peer; \
         up/full: A's bytes up per keystroke as a share of it. Idle bridges, both directions \
         of both connections together: {} B/s of keepalive)",
        idle.show(1)
    );
}

/// One room, two peers through their own proxies, `keys` keystrokes. With `measure_idle`,
/// also the bytes the idle pair exchanges per second, before the typing.
async fn wire_run(
    server: &Server,
    size: usize,
    typist: Typist,
    keys: usize,
    measure_idle: bool,
) -> (Traffic, Option<f64>) {
    let text = source(size);
    let room = server.create_room_with(&[(FILE, &text)]).await;
    let proxies = [
        Proxy::start(server.port).await,
        Proxy::start(server.port).await,
    ];
    // At the start of a line in the middle of the file (ASCII: characters are bytes).
    let at = text[..size / 2].rfind('\n').map_or(0, |i| i + 1);
    let typed: String = "print(value) ".chars().cycle().take(keys).collect();
    let expected = format!("{}{typed}{}", &text[..at], &text[at..]);
    let bytes = || proxies.each_ref().map(Proxy::bytes);
    let mut idle = None;
    let (before, after) = if typist == Typist::Yjs {
        let a = YClient::join(&invite(proxies[0].port, &room)).await;
        let b = YClient::join(&invite(proxies[1].port, &room)).await;
        quiet(&proxies).await;
        let before = bytes();
        let start = tokio::time::Instant::now();
        for (i, c) in typed.chars().enumerate() {
            tokio::time::sleep_until(start + KEY_INTERVAL * i as u32).await;
            a.insert(FILE, (at + i) as u32, &c.to_string());
        }
        b.wait_text(FILE, &expected, WAIT).await;
        quiet(&proxies).await;
        (before, bytes())
    } else {
        let mut editors = Vec::new();
        for (label, proxy) in ["a", "b"].into_iter().zip(&proxies) {
            let editor = FakeEditor::builder(Kind::VsCode)
                .label(label)
                .invite(&invite(proxy.port, &room))
                .start()
                .await;
            editor.wait_connected(WAIT).await;
            editor.open(FILE, &text);
            editors.push(editor);
        }
        let (a, b) = (&editors[0], &editors[1]);
        let cursor = |editor: &FakeEditor, offset: usize| {
            let position = editor.position(FILE, offset).to_json();
            editor.notify(
                "duet/cursor",
                json!({"uri": editor.uri(FILE), "position": position}),
            );
        };
        if typist == Typist::Plugin {
            cursor(b, 0);
        }
        quiet(&proxies).await;
        if measure_idle {
            let (start, window) = (bytes(), Duration::from_secs(4));
            tokio::time::sleep(window).await;
            let total: u64 = bytes()
                .iter()
                .zip(start)
                .map(|((u, d), (u0, d0))| u + d - u0 - d0)
                .sum();
            idle = Some(total as f64 / window.as_secs_f64());
        }
        let before = bytes();
        let start = tokio::time::Instant::now();
        for (i, c) in typed.chars().enumerate() {
            tokio::time::sleep_until(start + KEY_INTERVAL * i as u32).await;
            a.insert(FILE, at + i, &c.to_string());
            if typist == Typist::Plugin {
                cursor(a, at + i + 1);
            }
        }
        b.wait_text(FILE, &expected, WAIT).await;
        quiet(&proxies).await;
        let after = bytes();
        for editor in &editors {
            editor.assert_no_violations();
        }
        (before, after)
    };
    duet_e2e::eventually(WAIT, "the server to hold the typed text", || async {
        server
            .file(&room, FILE)
            .await
            .filter(|s| s.as_str() == expected)
    })
    .await;
    let per_key = |now: u64, then: u64| (now - then) as f64 / keys as f64;
    let traffic = [
        per_key(after[0].0, before[0].0),
        per_key(after[1].1, before[1].1),
        per_key(after[0].1, before[0].1),
        per_key(after[1].0, before[1].0),
    ];
    (traffic, idle)
}

/// Waits until nothing crosses the proxies for 300 ms.
async fn quiet(proxies: &[Proxy; 2]) {
    let deadline = Instant::now() + WAIT;
    let mut last = proxies.each_ref().map(Proxy::bytes);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = proxies.each_ref().map(Proxy::bytes);
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "the peers never went quiet");
        last = now;
    }
}

// ---------------------------------------------------------------------------------------------
// Join time.

async fn join(args: &Args) {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let one_big = vec![(FILE.to_string(), source(1 << 20))];
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("src/module_{i:03}.py"), source(5 << 10)))
        .collect();
    let rooms = [("one 1 MB file", one_big), ("200 files of 5 KB", many)];
    let ways = [
        "raw Yjs client, room not in memory: loaded from the database",
        "raw Yjs client, room in memory (a peer is in it)",
        "bridge, its editor opens one file",
        "bridge, its editor opens every file",
    ];
    let mut figures: BTreeMap<(usize, usize), Runs> = BTreeMap::new();
    for run in 1..=args.runs {
        for (r, (label, files)) in rooms.iter().enumerate() {
            eprintln!("run {run}/{}: join, {label}", args.runs);
            let room = room_with(&server, files).await;
            let url = server.ws_url(&room);
            let started = Instant::now();
            let host = YClient::join(&url).await;
            figures.entry((r, 0)).or_default().push(ms(started));
            assert_has(&host, files);
            let started = Instant::now();
            let peer = YClient::join(&url).await;
            figures.entry((r, 1)).or_default().push(ms(started));
            assert_has(&peer, files);
            drop(peer);
            figures
                .entry((r, 2))
                .or_default()
                .push(bridge_join(&url, &files[..1]).await);
            if files.len() > 1 {
                figures
                    .entry((r, 3))
                    .or_default()
                    .push(bridge_join(&url, files).await);
            }
        }
    }
    println!(
        "\njoin time, ms: a raw Yjs client from connecting until synced (sync step 2 applied); \
         a bridge (scripted VS Code) from starting duet-lsp with the invite until the files its \
         editor opens — new, empty buffers opened right after initialize — hold the room's text"
    );
    println!("{:<20} {:<62} {:>22}", "room", "joiner", "ms");
    for ((r, w), runs) in &figures {
        println!("{:<20} {:<62} {:>22}", rooms[*r].0, ways[*w], runs.show(1));
    }
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

fn assert_has(client: &YClient, files: &[(String, String)]) {
    for (path, text) in files {
        assert!(
            client.text(path).as_deref() == Some(text.as_str()),
            "{path} is not the room's text"
        );
    }
}

/// Starts a bridge with `url` and opens `files` as empty buffers; ms until they hold the text.
async fn bridge_join(url: &str, files: &[(String, String)]) -> f64 {
    let started = Instant::now();
    let editor = FakeEditor::builder(Kind::VsCode)
        .label("joiner")
        .invite(url)
        .start()
        .await;
    for (path, _) in files {
        editor.open(path, "");
    }
    let mut pending: Vec<&(String, String)> = files.iter().collect();
    while !pending.is_empty() {
        pending.retain(|(path, text)| editor.text(path) != *text);
        assert!(
            started.elapsed() < WAIT,
            "{} files never got the room's text\n{}",
            pending.len(),
            editor.report()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = ms(started);
    editor.assert_no_violations();
    elapsed
}

// ---------------------------------------------------------------------------------------------
// Memory.

async fn memory(args: &Args) {
    let n = args.pick(200, 50);
    let sizes = [("1 KB", 1 << 10), ("100 KB", 100 << 10)];
    // [size][0: loaded idle room, 1: room with its peer], then per peer.
    let mut rooms: Vec<[Runs; 2]> = sizes.iter().map(|_| Default::default()).collect();
    let mut peers = Runs::default();
    let mut baseline = Runs::default();
    for run in 1..=args.runs {
        for (s, &(label, size)) in sizes.iter().enumerate() {
            eprintln!("run {run}/{}: memory, {n} rooms of {label}", args.runs);
            let db = Database::new(Backend::Sqlite);
            // Rooms stay loaded without peers for an hour instead of a minute, and one client
            // may create them all at once.
            let args = [
                "--idle-unload-secs",
                "3600",
                "--max-rooms-per-minute",
                "1000000",
            ];
            let server = Server::start(&db, &args).await;
            let text = source(size);
            let mut refs = Vec::new();
            for _ in 0..n {
                refs.push(server.create_room_with(&[(FILE, &text)]).await);
            }
            let empty = settled_rss(&server).await;
            baseline.push(empty);
            // One at a time, each peer joins, checks the text and leaves: the room stays loaded.
            for room in &refs {
                let peer = YClient::join(&server.ws_url(room)).await;
                assert_eq!(peer.len(FILE), Some(size as u32));
            }
            wait_metric(&server, "duet_connections_open", 0).await;
            assert_eq!(server.metric("duet_rooms_in_memory").await, n as u64);
            let loaded = settled_rss(&server).await;
            let mut kept = Vec::new();
            for room in &refs {
                kept.push(YClient::join(&server.ws_url(room)).await);
            }
            let with_peers = settled_rss(&server).await;
            assert_eq!(server.metric("duet_connections_open").await, n as u64);
            rooms[s][0].push((loaded - empty) / n as f64);
            rooms[s][1].push((with_peers - empty) / n as f64);
        }
        eprintln!("run {run}/{}: memory, {n} peers in one room", args.runs);
        let db = Database::new(Backend::Sqlite);
        let max_peers = (n + 8).to_string();
        let server = Server::start(&db, &["--max-peers", &max_peers]).await;
        let room = server.create_room_with(&[(FILE, &source(1 << 10))]).await;
        let join = |i: usize| {
            let url = server.ws_url(&room);
            async move {
                let peer = YClient::join(&url).await;
                peer.set_presence(
                    json!({"user": {"name": format!("peer {i}"), "color": "#e06c75"}}),
                );
                peer
            }
        };
        let mut kept = vec![join(0).await];
        let one = settled_rss(&server).await;
        for i in 1..n {
            kept.push(join(i).await);
        }
        // Everyone sees everyone's presence: the room is fully set up.
        let last = &kept[n - 1];
        duet_e2e::eventually(WAIT, "every presence to arrive", || async {
            (last.peers().len() == n - 1).then_some(())
        })
        .await;
        let all = settled_rss(&server).await;
        assert_eq!(server.metric("duet_connections_open").await, n as u64);
        peers.push((all - one) / (n - 1) as f64);
    }
    println!(
        "\nserver memory: RSS (VmRSS of duet-server, SQLite) after creating {n} rooms, none in \
         memory: {} KB. Per room: RSS growth / {n}, each room one file of the size shown",
        baseline.show(0)
    );
    println!("{:<70} {:>20}", "", "KB");
    for (s, &(label, _)) in sizes.iter().enumerate() {
        println!(
            "{:<70} {:>20}",
            format!("per loaded idle room, no peers ({label} file; a peer joined and left)"),
            rooms[s][0].show(1)
        );
        println!(
            "{:<70} {:>20}",
            format!("per loaded room with one connected peer ({label} file)"),
            rooms[s][1].show(1)
        );
    }
    println!(
        "{:<70} {:>20}",
        format!("per peer: one room, {n} raw Yjs peers with presence vs 1"),
        peers.show(1)
    );
}

/// The server's RSS in KB, after a moment for it to settle.
async fn settled_rss(server: &Server) -> f64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn wait_metric(server: &Server, name: &str, value: u64) {
    duet_e2e::eventually(WAIT, &format!("{name} to be {value}"), || async {
        (server.metric(name).await == value).then_some(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Database writes.

const WRITE_ROOMS: usize = 10;
const WRITE_PEERS: usize = 2;
const WRITE_RATE: u32 = 10;
/// What each peer types: characters the file does not hold, to count them afterwards.
const PEER_KEYS: [&str; WRITE_PEERS] = ["@", "$"];

/// One run's figures, per second: flushes (the whole server), and per room: update rows
/// (the server's count), bytes written, and PostgreSQL's own counts of [update rows, file-copy
/// rows, rooms-row updates].
struct Writes {
    flushes: f64,
    updates: f64,
    bytes: f64,
    pg_rows: Option<[f64; 3]>,
}

async fn writes(args: &Args) {
    let seconds = args.pick(10.0, 3.0);
    // PostgreSQL: the tests' database if there is one, else a private cluster.
    let cluster = std::env::var_os("DUET_TEST_DATABASE_URL")
        .is_none()
        .then(Cluster::start);
    let columns = [
        (Backend::Sqlite, "5 KB", 5 << 10),
        (Backend::Postgres, "5 KB", 5 << 10),
        (Backend::Sqlite, "100 KB", 100 << 10),
        (Backend::Postgres, "100 KB", 100 << 10),
    ];
    // Per column: flushes, updates, bytes, then PostgreSQL's three counts.
    let mut figures: [[Runs; 6]; 4] = Default::default();
    for run in 1..=args.runs {
        for (c, &(backend, label, size)) in columns.iter().enumerate() {
            eprintln!(
                "run {run}/{}: writes, {backend:?}, {label} files",
                args.runs
            );
            let db = match (backend, &cluster) {
                (Backend::Postgres, Some(cluster)) => {
                    Database::with_url(Backend::Postgres, cluster.url())
                }
                _ => Database::new(backend),
            };
            let w = writes_run(&db, size, seconds).await;
            let values = [w.flushes, w.updates, w.bytes];
            let pg = w.pg_rows.into_iter().flatten();
            for (runs, value) in figures[c].iter_mut().zip(values.into_iter().chain(pg)) {
                runs.push(value);
            }
        }
    }
    let keys = f64::from(WRITE_RATE) * WRITE_PEERS as f64;
    println!(
        "\ndatabase writes under steady typing: {WRITE_ROOMS} rooms × {WRITE_PEERS} raw Yjs peers \
         × {WRITE_RATE} keystrokes/s each, for {seconds} s; one file a room (5 KB, then \
         100 KB); flush interval 200 ms (the default). Per second: everything written from the \
         start of the typing until nothing is left unflushed, divided by the typing time. \
         PostgreSQL: {}",
        if cluster.is_some() {
            "a private cluster (fsync off)"
        } else {
            "$DUET_TEST_DATABASE_URL (its statistics count everyone using it)"
        }
    );
    print!("{:<62}", "");
    for (backend, label, _) in columns {
        let name = match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        };
        print!(" {:>24}", format!("{name}, {label} file"));
    }
    println!();
    let row = |label: &str, cells: [String; 4]| {
        print!("{label:<62}");
        for cell in cells {
            print!(" {cell:>24}");
        }
        println!();
    };
    row(
        "naive, one write per keystroke: writes/s per room",
        [0; 4].map(|_| keys.to_string()),
    );
    row(
        &format!("naive: transactions/s for the {WRITE_ROOMS} rooms"),
        [0; 4].map(|_| (keys * WRITE_ROOMS as f64).to_string()),
    );
    let labels = [
        format!("flushes/s (group commits) for the {WRITE_ROOMS} rooms together"),
        "update rows written/s per room (server's count; a flush merges a room's updates)"
            .to_string(),
        "bytes written/s per room (SQLite: write_bytes; PG: WAL)".to_string(),
        "update rows inserted/s per room (PostgreSQL's count)".to_string(),
        "file-copy rows written/s per room (PostgreSQL's count)".to_string(),
        "rooms-row updates/s per room (PostgreSQL's count)".to_string(),
    ];
    for (f, label) in labels.iter().enumerate() {
        let decimals = if f == 2 { 0 } else { 1 };
        row(
            label,
            figures.each_ref().map(|column| {
                let runs = &column[f];
                if runs.0.is_empty() {
                    "—".to_string()
                } else {
                    runs.show(decimals).to_string()
                }
            }),
        );
    }
    println!(
        "(a file-copy row holds the file's whole text: the plain-text copy the REST API serves, \
         rewritten at every flush that changed the file)"
    );
}

async fn writes_run(db: &Database, size: usize, seconds: f64) -> Writes {
    let mut server = Server::start(db, &[]).await;
    let text = source(size);
    let mut rooms = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..WRITE_ROOMS {
        let room = server.create_room_with(&[(FILE, &text)]).await;
        for _ in 0..WRITE_PEERS {
            peers.push(YClient::join(&server.ws_url(&room)).await);
        }
        rooms.push(room);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg_url = (db.backend == Backend::Postgres).then(|| db.url.clone());
    let pg_before = pg_url.as_deref().map(pg_stats);
    let counters = [
        "duet_flushes_total",
        "duet_updates_written_total",
        "duet_update_rows_written_total",
    ];
    let mut before = [0; 3];
    for (value, name) in before.iter_mut().zip(counters) {
        *value = server.metric(name).await;
    }
    let io_before = bytes_written(&server);

    // Keystrokes evenly spread: peer after peer, each at WRITE_RATE.
    let per_peer = (f64::from(WRITE_RATE) * seconds).round() as usize;
    let total = per_peer * peers.len();
    let interval = Duration::from_secs_f64(seconds / total as f64);
    let start = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(start + interval * k as u32).await;
        let p = k % peers.len();
        peers[p].append(FILE, PEER_KEYS[p % WRITE_PEERS]);
    }
    // Every keystroke stored (an empty `duet_rooms_unflushed` alone could be a flush under way),
    // and, a flush later, stored only once.
    wait_metric(&server, counters[1], before[1] + total as u64).await;
    wait_metric(&server, "duet_rooms_unflushed", 0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut after = [0; 3];
    for (value, name) in after.iter_mut().zip(counters) {
        *value = server.metric(name).await;
    }
    let io_after = bytes_written(&server);
    assert_eq!(
        after[1] - before[1],
        total as u64,
        "keystrokes stored twice"
    );
    for (r, room) in rooms.iter().enumerate() {
        let stored = server.file(room, FILE).await.expect("the file");
        for (p, key) in PEER_KEYS.iter().enumerate() {
            assert_eq!(stored.matches(key).count(), per_peer, "{key} in room {r}");
            peers[r * WRITE_PEERS + p]
                .wait_text(FILE, &stored, WAIT)
                .await;
        }
    }
    let per_room = |delta: f64| delta / seconds / WRITE_ROOMS as f64;
    let pg_rows = match (pg_url, pg_before) {
        (Some(url), Some((rows0, wal0))) => {
            // Closing its connections makes PostgreSQL publish their statistics at once.
            assert!(server.terminate().await, "duet-server exits cleanly");
            let (rows, wal) = duet_e2e::eventually(
                WAIT,
                "PostgreSQL's statistics to count every update",
                || {
                    let stats = pg_stats(&url);
                    let rows = (after[2] - before[2]) as f64;
                    async move { (stats.0[0] - rows0[0] >= rows).then_some(stats) }
                },
            )
            .await;
            Some((
                [0, 1, 2].map(|i| per_room(rows[i] - rows0[i])),
                per_room(wal - wal0),
            ))
        }
        _ => None,
    };
    Writes {
        flushes: (after[0] - before[0]) as f64 / seconds,
        updates: per_room((after[2] - before[2]) as f64),
        bytes: pg_rows.map_or(per_room(io_after - io_before), |(_, wal)| wal),
        pg_rows: pg_rows.map(|(rows, _)| rows),
    }
}

/// What the server process wrote to storage (`/proc/<pid>/io` `write_bytes`: SQLite runs
/// inside it), less its own log.
fn bytes_written(server: &Server) -> f64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", server.pid())).expect("/proc/<pid>/io");
    let written: f64 = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes");
    written - server.log().len() as f64
}

/// PostgreSQL's counts: [room_updates rows inserted, room_files rows updated, rooms rows
/// updated] (creating a room only inserts rows in the last two), and the WAL bytes written.
fn pg_stats(url: &str) -> ([f64; 3], f64) {
    let sql = "SELECT \
        (SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = 'room_updates'), \
        (SELECT coalesce(sum(n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname = 'room_files'), \
        (SELECT coalesce(sum(n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname = 'rooms'), \
        (SELECT wal_bytes FROM pg_stat_wal)";
    let output = Command::new("psql")
        .arg(url)
        .args(["-XAt", "-F", " ", "-c", sql])
        .output()
        .expect("psql (PostgreSQL's client) on PATH");
    assert!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let numbers: Vec<f64> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    assert_eq!(numbers.len(), 4, "psql answered {numbers:?}");
    ([numbers[0], numbers[1], numbers[2]], numbers[3])
}
