//! The torture run: four editors in one room — two real Neovims with the plugin, a scripted
//! VS Code-like and a scripted Helix-like editor, each with its own `duet-lsp` — make random
//! edits in three files at once (inserts, deletes, replacements, multi-line text, emoji, CJK,
//! CRLF text, whole-line moves, VS Code multi-cursor edits, Helix completion previews) with
//! random pauses, and do what people do besides typing: type at the very end of a file (with
//! and without a final line break, which the scripted editors delete and type after), undo a
//! burst of their own edits and redo it after a pause while the others type, hold Helix's
//! completion menu open 5–15 s while the others type and then pick an item, rewrite a whole
//! buffer as a formatter does, and (Neovim) ask for the status and the peers, messages many
//! lines long, while typing. Meanwhile faults hit them:
//!
//! - the server is killed with `SIGKILL` and restarted;
//! - the Helix-like editor's network is cut for 10 s (silently: a proxy stops carrying
//!   packets, as a dead Wi-Fi would);
//! - PostgreSQL is stopped for 30 s, then started again;
//! - a fifth editor joins mid-run with a stale copy of a file on disk (and then types too);
//! - a peer joins that never reads its socket.
//!
//! Fault times are drawn from the seed, so faults overlap in different ways from seed to seed
//! (the server may die while the database is down). After the typing stops: every editor's
//! buffer (Neovim's lines: the final line break it keeps outside them may be one the room's
//! text lacks), every bridge's replica (`duet.status` digests), the server's text, the plain-text
//! copy in the database and the text a restarted server loads are byte-identical for every
//! file; every marker typed is there (exactly once unless its line was moved); the stale
//! joiner's own text was kept in a recovery file; the slow peer was let go.
//!
//! With several nodes (`torture_on_three_nodes`, or `DUET_TORTURE_NODES=3` for the seeds of
//! `torture`) the editors are spread over three `duet-server` nodes that share the PostgreSQL
//! and relay through a real Redis (VS Code-like and one Neovim on the first, Helix-like and the
//! stale joiner on the second, the other Neovim and the slow peer on the third). The first node
//! is the one killed; besides, Redis is killed and started again after 3 s, and the second node
//! is cut from Redis for 10 s (a proxy that stops carrying packets). Every node's text must
//! then agree with every editor's.
//!
//! Every editor makes at least 1,000 edits and types until the last fault is over (35–52 s
//! in). In CI: one seed (`cargo test -p duet-e2e --test torture -- --nocapture`). Many seeds: `DUET_TORTURE_SEEDS=1-20` (or `7,11,13`); also
//! `DUET_TORTURE_EDITS` (per editor). Every run prints its seed; a failing seed replays its
//! choices (timing still varies). Needs PostgreSQL, Neovim and pynvim (`tests/run` installs
//! them).

use std::collections::HashSet;
use std::time::Duration;

use duet_e2e::editor::{marker_mask, FakeEditor, Kind, Rng, WAIT};
use duet_e2e::nvim::Nvims;
use duet_e2e::pg::Cluster;
use duet_e2e::proxy::Proxy;
use duet_e2e::redis::{Redis, Tap};
use duet_e2e::server::{Backend, Database, RoomRef, Server, TempDir};
use duet_server::digest::sha256_hex;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::StateVector;

const FILES: [&str; 3] = ["notes.txt", "src/app.py", "docs/guide.md"];
/// The faults every run injects: kill, cut, database outage, slow peer, stale joiner; with
/// several nodes also a Redis restart and a cut between one node and Redis.
const FAULTS: usize = 5;
const RELAY_FAULTS: usize = 2;
const CUT: Duration = Duration::from_secs(10);
const REDIS_DOWN: Duration = Duration::from_secs(3);
const DB_DOWN: Duration = Duration::from_secs(30);
const FILLER: &[&str] = &[
    "a",
    "b",
    " ",
    "é",
    "世",
    "界",
    "🎉",
    "\n",
    "x",
    "—",
    "ñ",
    "👩‍💻",
    "z",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture() {
    let nodes = std::env::var("DUET_TORTURE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    torture_on(&seeds(), nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_on_three_nodes() {
    torture_on(&seeds()[..1], 3).await;
}

/// One torture run at a time: two at once (four editors, their bridges, servers and PostgreSQL
/// each) starve a 2-core machine of CPU, beyond any load the run means to apply (a CI run with
/// both at once lost a marker once, «h.41» of seed 20261121: see docs/benchmarks.md).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn torture_on(seeds: &[u64], nodes: usize) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let edits = std::env::var("DUET_TORTURE_EDITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut summaries = Vec::new();
    for &seed in seeds {
        summaries.push(run(seed, edits, nodes).await);
    }
    let faults = FAULTS + if nodes > 1 { RELAY_FAULTS } else { 0 };
    println!(
        "torture on {nodes} node(s): {} run(s), {} edits, {} faults; converged after the last edit / the last fault: {}",
        summaries.len(),
        summaries.iter().map(|s| s.edits).sum::<usize>(),
        summaries.len() * faults,
        summaries
            .iter()
            .map(|s| format!(
                "{:.2} s / {:.1} s (seed {})",
                s.after_edit.as_secs_f64(),
                s.after_fault.as_secs_f64(),
                s.seed
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// `DUET_TORTURE_SEEDS`: `a-b` or `a,b,c`; one fixed seed by default, so CI is reproducible.
fn seeds() -> Vec<u64> {
    let Ok(spec) = std::env::var("DUET_TORTURE_SEEDS") else {
        return vec![20261121];
    };
    if let Some((a, b)) = spec.split_once('-') {
        let (a, b): (u64, u64) = (
            a.trim().parse().expect("DUET_TORTURE_SEEDS a-b"),
            b.trim().parse().expect("DUET_TORTURE_SEEDS a-b"),
        );
        return (a..=b).collect();
    }
    spec.split(',')
        .map(|s| s.trim().parse().expect("DUET_TORTURE_SEEDS: numbers"))
        .collect()
}

struct Summary {
    seed: u64,
    edits: usize,
    after_edit: Duration,
    after_fault: Duration,
}

/// When each fault happens, from the seed.
struct Faults {
    kill_at: Duration,
    kill_for: Duration,
    cut_at: Duration,
    db_at: Duration,
    slow_at: Duration,
    stale_at: Duration,
    /// With several nodes: when Redis restarts, and when the second node is cut from it.
    relay: Option<(Duration, Duration)>,
}

impl Faults {
    /// The faults of a run; those of several nodes from a generator of their own, so that a
    /// seed's other faults and edits stay what they are on one node.
    fn draw(rng: &mut Rng, seed: u64, nodes: usize) -> Faults {
        let relay = (nodes > 1).then(|| {
            let mut own = Rng::new(seed ^ 0x5ca1_e000);
            let mut at = |from: u64, to: u64| {
                Duration::from_millis(own.below(((to - from) * 1000) as usize) as u64 + from * 1000)
            };
            (at(3, 40), at(3, 40))
        });
        let mut at = |from: u64, to: u64| {
            Duration::from_millis(rng.below(((to - from) * 1000) as usize) as u64 + from * 1000)
        };
        Faults {
            kill_at: at(3, 40),
            kill_for: at(0, 3),
            cut_at: at(3, 40),
            db_at: at(3, 22),
            slow_at: at(2, 30),
            stale_at: at(5, 40),
            relay,
        }
    }

    fn print(&self) {
        let faults = self;
        println!(
            "  faults: kill -9 at {:.1} s for {:.1} s; {} s network cut at {:.1} s; {} s database outage at {:.1} s; slow peer at {:.1} s; stale joiner at {:.1} s",
            faults.kill_at.as_secs_f64(),
            faults.kill_for.as_secs_f64(),
            CUT.as_secs(),
            faults.cut_at.as_secs_f64(),
            DB_DOWN.as_secs(),
            faults.db_at.as_secs_f64(),
            faults.slow_at.as_secs_f64(),
            faults.stale_at.as_secs_f64()
        );
        if let Some((redis_at, cut_at)) = faults.relay {
            println!(
                "  relay faults: Redis down at {:.1} s for {} s; second node cut from Redis at {:.1} s for {} s",
                redis_at.as_secs_f64(),
                REDIS_DOWN.as_secs(),
                cut_at.as_secs_f64(),
                CUT.as_secs()
            );
        }
    }

    fn last_end(&self) -> Duration {
        [
            self.kill_at + self.kill_for,
            self.cut_at + CUT,
            self.db_at + DB_DOWN,
            self.slow_at,
            self.stale_at,
            self.relay
                .map_or(Duration::ZERO, |(redis_at, _)| redis_at + REDIS_DOWN),
            self.relay
                .map_or(Duration::ZERO, |(_, cut_at)| cut_at + CUT),
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
    }
}

/// What one editor did: its edits, the markers it typed and those it moved with a line, and
/// how many steps it undid (and redid).
#[derive(Default)]
struct Typed {
    edits: usize,
    markers: Vec<String>,
    moved: HashSet<String>,
    undone: u64,
}

/// One seed's run, phase by phase.
async fn run(seed: u64, edits: usize, nodes: usize) -> Summary {
    println!("torture seed {seed} on {nodes} node(s): DUET_TORTURE_SEEDS={seed} replays it");
    let mut rng = Rng::new(seed);
    let faults = Faults::draw(&mut rng, seed, nodes);
    let mut stage = Stage::set_up(nodes).await;
    let mut editors = Editors::join(&stage).await;
    faults.print();
    let typing = type_under_faults(&mut stage, &mut editors, &faults, &mut rng, edits).await;
    let (texts, converged) = converge(&stage, &mut editors, &typing.stale, seed).await;
    let after_fault = converged.saturating_duration_since(typing.started + faults.last_end());
    let after_edit = converged.saturating_duration_since(typing.ended);
    println!(
        "  converged {:.2} s after the last edit, {:.2} s after the last fault ended",
        after_edit.as_secs_f64(),
        after_fault.as_secs_f64()
    );
    check_replicas(&mut editors, &typing.stale, &texts, seed).await;
    check_store_and_reload(&mut stage, &texts, seed).await;
    let markers = check_markers(&texts, &typing.typed, seed);
    check_stale_copy_kept(&typing.stale, &texts, seed);
    let slow_closed = typing.slow.await.expect("slow peer task");
    println!(
        "  {markers} markers checked; replicas, buffers, server, database and reload identical; slow peer let go: {slow_closed}"
    );
    assert!(
        slow_closed,
        "seed {seed}: the peer that never reads was never let go"
    );
    for (_, nv) in editors.nvims {
        nv.quit().await;
    }
    Summary {
        seed,
        edits: typing.typed.iter().map(|t| t.edits).sum(),
        after_edit,
        after_fault,
    }
}

/// What the editors meet: PostgreSQL, the nodes (with Redis between them, the second node
/// reaching it through a tap that can cut), the room with its files, and the proxy the
/// Helix-like editor reaches its node through.
struct Stage {
    cluster: std::sync::Arc<Cluster>,
    _db: Database,
    redis: Option<Redis>,
    tap: Option<Tap>,
    /// The first node (killed and restarted), then the others.
    servers: Vec<Server>,
    room: RoomRef,
    initial: Vec<(&'static str, String)>,
    /// The invites to the first, second and third node (all the first on one node), and the
    /// second's through the proxy.
    url: String,
    second: String,
    third: String,
    proxied: String,
    proxy: Proxy,
}

impl Stage {
    async fn set_up(nodes: usize) -> Stage {
        let cluster = std::sync::Arc::new(Cluster::start());
        let db = Database::with_url(Backend::Postgres, cluster.url());
        // With several nodes: Redis, and the second node reaching it through a tap that can cut.
        let redis = match nodes {
            1 => None,
            _ => Some(Redis::start().await),
        };
        let tap = match &redis {
            Some(redis) => Some(Tap::start(redis.port).await),
            None => None,
        };
        let mut servers = Vec::new();
        for i in 0..nodes {
            let relay = match (&redis, &tap) {
                (Some(_), Some(tap)) if i == 1 => tap.url(),
                (Some(redis), _) => redis.url(),
                _ => String::new(),
            };
            let args: Vec<&str> = match relay.as_str() {
                "" => vec![],
                url => vec!["--redis-url", url],
            };
            servers.push(Server::start(&db, &args).await);
        }
        let (server, more_nodes) = servers.split_first_mut().expect("a node");
        let initial: Vec<(&str, String)> = FILES
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    *f,
                    format!(
                        "# {f} — 共有 🎉\nsome text here\n«seed.{i}»\nmore filler\n«end.{i}»\n"
                    ),
                )
            })
            .collect();
        let files: Vec<(&str, &str)> = initial.iter().map(|(f, t)| (*f, t.as_str())).collect();
        let room = server.create_room_with(&files).await;
        let url = server.ws_url(&room);
        // Each editor's node: the first, second or third (all the first on one node).
        let url_on = |i: usize| match i % nodes {
            0 => url.clone(),
            n => more_nodes[n - 1].ws_url(&room),
        };
        let (second, third) = (url_on(1), url_on(2));
        let second_port = if nodes > 1 {
            more_nodes[0].port
        } else {
            server.port
        };
        let proxy = Proxy::start(second_port).await;
        let proxied = second.replace(&format!(":{second_port}/"), &format!(":{}/", proxy.port));
        Stage {
            cluster,
            _db: db,
            redis,
            tap,
            servers,
            room,
            initial,
            url,
            second,
            third,
            proxied,
            proxy,
        }
    }

    fn server(&self) -> &Server {
        &self.servers[0]
    }
}

/// The four editors of the run: the scripted VS Code and Helix, and two Neovims (with the
/// directories they work in).
struct Editors {
    vscode: FakeEditor,
    helix: FakeEditor,
    nvims: Vec<(&'static str, Nvims)>,
    _dirs: Vec<TempDir>,
}

impl Editors {
    /// Every editor in the room, with every file loaded and shared.
    async fn join(stage: &Stage) -> Editors {
        let Stage {
            room,
            initial,
            url,
            third,
            proxied,
            ..
        } = stage;
        let server = stage.server();
        let vscode = fake(Kind::VsCode, "vscode", url, server, room).await;
        let helix = fake(Kind::Helix, "helix", proxied, server, room).await;
        let mut nvims = Vec::new();
        let mut dirs = Vec::new();
        for (name, invite) in [("nvim-a", third), ("nvim-b", url)] {
            let dir = TempDir::new(name);
            for (f, t) in initial {
                write(&dir.0.join(f), t);
            }
            let mut nv = Nvims::spawn().await;
            nv.start(
                name,
                &dir.0,
                &FILES,
                json!({"name": name, "color": "#e06c75", "invite": invite}),
            )
            .await;
            nv.lua(name, LUA, json!([FILES])).await;
            for (f, t) in initial {
                let want = t.clone();
                nv.wait_for(
                    name,
                    &format!("{f} loaded and shared"),
                    "return torture.get(...)",
                    json!([f]),
                    WAIT,
                    move |v| v[1].as_str() == Some(&want),
                )
                .await;
            }
            // The buffers read the files before the bridge is in the room: typing now would be
            // typing into a copy the join then sets aside (as it must a stale one).
            nv.wait_for(
                name,
                "the bridge in the room",
                "local s = require('duet').state.status; return s and s.state",
                json!([]),
                WAIT,
                |state| state == "connected",
            )
            .await;
            nvims.push((name, nv));
            dirs.push(dir);
        }
        Editors {
            vscode,
            helix,
            nvims,
            _dirs: dirs,
        }
    }
}

/// The typing, as it ended: what each editor typed (VS Code-like, Helix-like, the two Neovims,
/// the stale joiner), when it started and ended, the stale joiner, and the slow peer's task
/// (true once it was let go).
struct Typing {
    typed: [Typed; 5],
    started: Instant,
    ended: Instant,
    stale: FakeEditor,
    slow: tokio::task::JoinHandle<bool>,
}

/// Everyone types until the last fault is over, while the faults hit.
async fn type_under_faults(
    stage: &mut Stage,
    editors: &mut Editors,
    faults: &Faults,
    rng: &mut Rng,
    edits: usize,
) -> Typing {
    let Stage {
        cluster,
        redis,
        tap,
        servers,
        initial,
        second,
        third,
        proxy,
        ..
    } = stage;
    let server = &mut servers[0];
    let Editors {
        vscode,
        helix,
        nvims,
        ..
    } = editors;
    let started = Instant::now();
    // Everyone types until the last fault is over.
    let pace = Pace {
        started,
        until: faults.last_end(),
        edits,
        mean: faults.last_end() / edits.max(1) as u32,
    };
    let seeds: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
    let [nv_a, nv_b] = &mut nvims[..] else {
        unreachable!()
    };
    let slow = tokio::spawn({
        let (url, at) = (third.clone(), faults.slow_at);
        async move {
            tokio::time::sleep(at).await;
            slow_peer(url).await
        }
    });
    let (typed_fakes, typed_a, typed_b, (stale, typed_stale), ()) = tokio::join!(
        async {
            tokio::join!(
                type_fake(vscode, "v", seeds[0], pace),
                type_fake(helix, "h", seeds[1], pace),
            )
        },
        type_nvim(&mut nv_a.1, nv_a.0, "na", seeds[2], pace),
        type_nvim(&mut nv_b.1, nv_b.0, "nb", seeds[3], pace),
        async {
            tokio::time::sleep(faults.stale_at).await;
            let stale = stale_joiner(second, &initial[0]).await;
            let typed = type_fake(
                &stale,
                "s",
                seeds[4],
                // Until the end, at everyone's pace.
                Pace { edits: 0, ..pace },
            )
            .await;
            (stale, typed)
        },
        async {
            let cluster_down = cluster.clone();
            tokio::join!(
                async {
                    tokio::time::sleep(faults.kill_at).await;
                    server.kill9();
                    tokio::time::sleep(faults.kill_for).await;
                    server.restart().await;
                },
                async {
                    tokio::time::sleep(faults.cut_at).await;
                    proxy.cut();
                    tokio::time::sleep(CUT).await;
                    proxy.restore();
                },
                async {
                    let (Some((redis_at, cut_at)), Some(redis), Some(tap)) =
                        (faults.relay, redis.as_mut(), tap.as_ref())
                    else {
                        return;
                    };
                    tokio::join!(
                        async {
                            tokio::time::sleep(redis_at).await;
                            redis.kill();
                            tokio::time::sleep(REDIS_DOWN).await;
                            redis.up().await;
                        },
                        async {
                            tokio::time::sleep(cut_at).await;
                            tap.cut();
                            tokio::time::sleep(CUT).await;
                            tap.restore();
                        },
                    );
                },
                async {
                    tokio::time::sleep(faults.db_at).await;
                    let c = cluster_down.clone();
                    tokio::task::spawn_blocking(move || c.down())
                        .await
                        .expect("pg down");
                    tokio::time::sleep(DB_DOWN).await;
                    let c = cluster_down.clone();
                    tokio::task::spawn_blocking(move || c.up())
                        .await
                        .expect("pg up");
                },
            );
        },
    );
    let ended = Instant::now();
    let typed = [typed_fakes.0, typed_fakes.1, typed_a, typed_b, typed_stale];
    let total: usize = typed.iter().map(|t| t.edits).sum();
    println!(
        "  typed {total} edits in {:.1} s ({}); undid and redid {} steps",
        (ended - started).as_secs_f64(),
        typed
            .iter()
            .map(|t| t.edits.to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        typed.iter().map(|t| t.undone).sum::<u64>()
    );
    Typing {
        typed,
        started,
        ended,
        stale,
        slow,
    }
}

/// Quiescence: every buffer equals the server's text, and stays so (a second). The texts of
/// the files, and when they settled.
async fn converge(
    stage: &Stage,
    editors: &mut Editors,
    stale: &FakeEditor,
    seed: u64,
) -> (Vec<String>, Instant) {
    let (server, more_nodes) = (stage.server(), &stage.servers[1..]);
    let room = &stage.room;
    let nvims = &mut editors.nvims;
    let fakes = [&editors.vscode, &editors.helix, stale];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stable: Option<(Instant, Vec<String>)> = None;
    let texts = loop {
        let mut texts = Vec::new();
        let mut report = String::new();
        let mut agreed = true;
        for f in FILES {
            let served = server.file(room, f).await.unwrap_or_default();
            let mut others: Vec<(String, String)> =
                fakes.iter().map(|e| (e.label.clone(), e.text(f))).collect();
            for (i, node) in more_nodes.iter().enumerate() {
                let text = node.file(room, f).await.unwrap_or_default();
                others.push((format!("node {}", i + 2), text));
            }
            for (name, nv) in nvims.iter_mut() {
                let got = nv.lua(name, "return torture.get(...)", json!([f])).await;
                // Neovim's lines are the room's; the final line break it keeps outside its
                // lines may be one the room's text does not have.
                let text = got[1].as_str().unwrap_or("");
                let lines = text
                    .strip_suffix('\n')
                    .filter(|t| *t == served)
                    .unwrap_or(text);
                others.push((name.to_string(), lines.to_string()));
            }
            for (who, text) in &others {
                if *text != served {
                    agreed = false;
                    report.push_str(&format!(
                        "{f}: {who} differs\n  {who}: {text:?}\n  server: {served:?}\n"
                    ));
                }
            }
            texts.push(served);
        }
        match (&stable, agreed) {
            (Some((since, last)), true) if *last == texts => {
                if since.elapsed() > Duration::from_secs(1) {
                    break texts;
                }
            }
            (_, true) => stable = Some((Instant::now(), texts.clone())),
            (_, false) => stable = None,
        }
        if Instant::now() > deadline {
            // Whose replica is behind, and whose editor is behind its replica?
            let digests: Vec<String> = texts.iter().map(|t| sha256_hex(t)).collect();
            for e in fakes {
                let status = e.execute_command("duet.status", json!([])).await;
                report.push_str(&format!(
                    "{} replica: {:?} (server: {digests:?})\n",
                    e.label,
                    status.map(|s| s["sha256"].clone())
                ));
            }
            for (name, nv) in nvims.iter_mut() {
                let status = nv.lua(name, NVIM_STATUS, json!([])).await;
                report.push_str(&format!(
                    "{name} replica: {} (server: {digests:?})\n",
                    status["sha256"]
                ));
            }
            let mut logs = String::new();
            for e in fakes {
                logs.push_str(&e.report());
            }
            for (_, nv) in nvims.iter() {
                logs.push_str(&nv.report());
            }
            panic!(
                "seed {seed}: no convergence within 120 s\n{report}\n{logs}\n{}",
                server.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let converged = stable.map(|(since, _)| since).unwrap_or_else(Instant::now);
    // Where to look if a check below fails.
    for e in fakes {
        println!("  {} trace and bridge log: {}", e.label, e.dump().display());
    }
    for (name, nv) in nvims.iter() {
        println!("  {name} bridge log: {}", nv.bridge_log_path(name));
    }
    (texts, converged)
}

/// Every bridge's replica holds the texts, no scripted editor saw a protocol violation or
/// died, and no bridge ever found a document out of step with the room (it would have
/// healed, but that is a bug).
async fn check_replicas(editors: &mut Editors, stale: &FakeEditor, texts: &[String], seed: u64) {
    let fakes = [&editors.vscode, &editors.helix, stale];
    let nvims = &mut editors.nvims;
    let digests: Vec<String> = texts.iter().map(|t| sha256_hex(t)).collect();
    for e in fakes {
        let status = e
            .execute_command("duet.status", json!([]))
            .await
            .expect("duet.status");
        check_digests(&e.label, &status, &digests);
        e.assert_no_violations();
        assert!(e.alive(), "{} died\n{}", e.label, e.report());
    }
    let logs: Vec<(String, String)> = fakes
        .iter()
        .map(|e| (e.label.clone(), e.log()))
        .chain(
            nvims
                .iter()
                .map(|(name, nv)| (name.to_string(), nv.bridge_log(name))),
        )
        .collect();
    for (who, log) in logs {
        assert!(
            !log.contains("lost track"),
            "seed {seed}: {who}'s bridge lost track of a document:\n{}",
            log.lines()
                .filter(|l| l.contains("lost track"))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for (name, nv) in nvims.iter_mut() {
        let status = nv.lua(name, NVIM_STATUS, json!([])).await;
        check_digests(name, &status, &digests);
    }
}

/// The database's plain-text copies, once everything is flushed, and what a restarted server
/// loads from the state and the update log. The other nodes stop first (writing what they
/// hold); the first node's copies of what only they changed follow within seconds.
async fn check_store_and_reload(stage: &mut Stage, texts: &[String], seed: u64) {
    let Stage {
        cluster,
        servers,
        room,
        ..
    } = stage;
    let (server, more_nodes) = servers.split_first_mut().expect("a node");
    for node in more_nodes.iter_mut() {
        assert!(
            node.terminate().await,
            "seed {seed}: a node did not stop cleanly"
        );
    }
    duet_e2e::eventually(Duration::from_secs(30), "every room flushed", || async {
        (server.metric("duet_rooms_unflushed").await == 0).then_some(())
    })
    .await;
    let copies = |f: &str| {
        cluster.query(&format!(
            "SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM room_files WHERE room_id = '{}' AND path = '{f}'",
            room.id
        ))
    };
    let copied = |f: &str, text: &str| unhex(copies(f).trim()) == text;
    duet_e2e::eventually(Duration::from_secs(30), "the stored copies", || async {
        FILES
            .iter()
            .zip(texts)
            .all(|(f, text)| copied(f, text))
            .then_some(())
    })
    .await;
    server.kill9();
    server.restart().await;
    for (f, text) in FILES.iter().zip(texts) {
        assert_eq!(
            server.file(room, f).await.as_deref(),
            Some(text.as_str()),
            "seed {seed}: {f} as a restarted server loads it"
        );
    }
}

/// Every marker is there: once, or at least once if a line move carried it (two editors
/// moving the same line at once both re-insert it); nothing but whole markers between « and ».
/// How many markers were checked.
fn check_markers(texts: &[String], typed: &[Typed], seed: u64) -> usize {
    let all = texts.concat();
    let moved: HashSet<&String> = typed.iter().flat_map(|t| &t.moved).collect();
    let mut markers = 0;
    let fixed: Vec<String> = (0..FILES.len())
        .flat_map(|i| [format!("«seed.{i}»"), format!("«end.{i}»")])
        .collect();
    for marker in typed.iter().flat_map(|t| &t.markers).chain(&fixed) {
        let n = all.matches(marker.as_str()).count();
        markers += 1;
        if moved.contains(marker) {
            assert!(n >= 1, "seed {seed}: {marker} lost");
        } else {
            assert_eq!(n, 1, "seed {seed}: {marker} {n} times");
        }
    }
    let known: HashSet<&str> = typed
        .iter()
        .flat_map(|t| &t.markers)
        .map(String::as_str)
        .chain(fixed.iter().map(String::as_str))
        .collect();
    let damaged: Vec<String> = text_segments(&all)
        .into_iter()
        .filter(|(segment, _)| !known.contains(segment.as_str()))
        .map(|(_, context)| context)
        .collect();
    assert!(
        damaged.is_empty(),
        "seed {seed}: markers split or damaged: {damaged:#?}"
    );

    markers
}

/// The stale joiner's own line was kept for it, in a recovery file, not in the room.
fn check_stale_copy_kept(stale: &FakeEditor, texts: &[String], seed: u64) {
    let recovered = recovered_texts(stale);
    assert!(
        recovered.iter().any(|t| t.contains("«stale-only»")),
        "seed {seed}: the stale copy was not saved: {recovered:?}"
    );
    assert!(
        !texts.concat().contains("«stale-only»"),
        "the stale copy replaced the room's text"
    );
}

fn write(path: &std::path::Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

fn unhex(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    String::from_utf8(bytes).expect("UTF-8")
}

fn check_digests(who: &str, status: &Value, digests: &[String]) {
    for (f, digest) in FILES.iter().zip(digests) {
        assert_eq!(
            status["sha256"][f].as_str(),
            Some(digest.as_str()),
            "{who}'s replica of {f}: {status}"
        );
    }
}

/// A scripted editor whose bridge joins `invite`, with every file open.
async fn fake(
    kind: Kind,
    label: &str,
    invite: &str,
    server: &Server,
    room: &RoomRef,
) -> FakeEditor {
    let editor = FakeEditor::builder(kind)
        .label(label)
        .invite(invite)
        .start()
        .await;
    editor.wait_connected(WAIT).await;
    for f in FILES {
        let text = server.file(room, f).await.expect("the room's file");
        editor.open(f, &text);
    }
    editor
}

/// A VS Code-like editor that joins with an old copy of the first file on disk, plus a line of
/// its own: the room's text must win, and its own text must be kept in a recovery file.
async fn stale_joiner(invite: &str, (file, initial): &(&str, String)) -> FakeEditor {
    let stale = format!("{initial}«stale-only»\n");
    let editor = FakeEditor::builder(Kind::VsCode)
        .label("stale")
        .invite(invite)
        .file(file, &stale)
        .start()
        .await;
    editor.wait_connected(Duration::from_secs(90)).await;
    for f in FILES {
        let text = if f == *file {
            stale.clone()
        } else {
            String::new()
        };
        editor.open(f, &text);
    }
    duet_e2e::eventually(
        Duration::from_secs(60),
        "the stale copy to be replaced",
        || async { (!editor.text(file).contains("«stale-only»")).then_some(()) },
    )
    .await;
    editor
}

/// The texts the bridge saved because the room's version replaced them.
fn recovered_texts(editor: &FakeEditor) -> Vec<String> {
    let root = editor
        .workspace()
        .parent()
        .expect("editor dir")
        .join("home/.local/state/duet/recovered");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                out.push(text);
            }
        }
    }
    out
}

/// A peer that joins, asks for the document, and never reads again: whether the server let it
/// go within a minute.
async fn slow_peer(url: String) -> bool {
    let connected = tokio_tungstenite::connect_async(url.as_str()).await;
    {
        let Ok((mut socket, _)) = connected else {
            // The server was down at that moment: nothing to let go.
            return true;
        };
        let hello = YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        let _ = socket.send(hello.into()).await;
        // Not reading: the server's frames pile up in the socket until it gives up on us.
        // Then reading shows whether it did (a close frame or the end of the stream).
        tokio::time::sleep(Duration::from_secs(45)).await;
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            use futures_util::StreamExt;
            while let Some(frame) = socket.next().await {
                match frame {
                    Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        drained.is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// The random edits.

/// One random edit, decided on the editor's current text.
enum Op {
    /// Character ranges of the current text to replace (non-overlapping), as one change.
    Edit {
        edits: Vec<(usize, usize, String)>,
        marker: Option<String>,
        /// Filler a person would type (Neovim: typed in insert mode).
        typed: bool,
    },
    /// Line `line` (0-based) moved to before line `before`.
    Move {
        line: usize,
        before: usize,
        markers: Vec<String>,
    },
    /// A formatter's whole-buffer rewrite ([`format`]), as one change of the whole text.
    Format,
}

/// What a formatter piped through the buffer does here: strips the spaces that end lines.
fn format(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(content) => format!("{}\n", content.trim_end_matches(' ')),
            None => line.trim_end_matches(' ').to_string(),
        })
        .collect()
}

/// Every run of marker characters (see [`marker_mask`]) with some context around it.
fn text_segments(text: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mask = marker_mask(&chars);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !mask[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && mask[i] && !(i > start && chars[i - 1] == '»') {
            i += 1;
        }
        let segment: String = chars[start..i].iter().collect();
        let context: String = chars[start.saturating_sub(20)..(i + 20).min(chars.len())]
            .iter()
            .collect();
        out.push((segment, context));
    }
    out
}

fn markers_in(text: &str) -> Vec<String> {
    text.split('«')
        .skip(1)
        .filter_map(|rest| rest.split_once('»').map(|(m, _)| format!("«{m}»")))
        .collect()
}

/// Where an edit may begin or end: not inside a marker, not between `\r` and `\n` (no editor
/// puts a cursor there). The very end of the text (after a final line break, or with none) is
/// where people type too, except in Neovim, whose text as read here ends with the line break
/// it keeps outside its lines (its end of the last line is one character before). Neovim's
/// cursor sits on whole characters as it draws them: a zero-width joiner (left alone when an
/// edit split an emoji sequence) or a combining mark belongs to the character before it, so
/// a cursor put between the two lands before both — typing meant for after `«h.41»` in
/// `«h.41»\u{200d}` went inside the marker, and a run counted it lost.
fn allowed(text: &[char], mask: &[bool], at: usize, kind: Kind) -> bool {
    let end = text.len().saturating_sub(usize::from(kind == Kind::Neovim));
    let joins = |c: Option<&char>| {
        c.is_some_and(
            |&c| matches!(c, '\u{200d}' | '\u{fe00}'..='\u{fe0f}' | '\u{300}'..='\u{36f}'),
        )
    };
    at <= end
        && (at == 0 || !mask[at - 1] || text[at - 1] == '»')
        && !(at > 0 && text[at - 1] == '\r' && text.get(at) == Some(&'\n'))
        && !(kind == Kind::Neovim && at > 0 && (joins(text.get(at)) || joins(text.get(at - 1))))
}

fn filler(rng: &mut Rng) -> String {
    (0..1 + rng.below(4)).map(|_| *rng.pick(FILLER)).collect()
}

fn next_op(text: &str, rng: &mut Rng, marker: &str, kind: Kind) -> Option<Op> {
    let chars: Vec<char> = text.chars().collect();
    let mask = marker_mask(&chars);
    let points: Vec<usize> = (0..=chars.len())
        .filter(|&i| allowed(&chars, &mask, i, kind))
        .collect();
    // No allowed point (a text of markers only): nothing to do this time.
    let at = *rng.choose(&points)?;
    // A range of 1–8 characters of filler starting at an allowed point.
    let range = |rng: &mut Rng| {
        let start = *rng.choose(&points)?;
        let want = 1 + rng.below(8);
        let mut end = start;
        while end < chars.len() && end - start < want && !mask[end] {
            end += 1;
        }
        while end > start && !allowed(&chars, &mask, end, kind) {
            end -= 1;
        }
        (end > start).then_some((start, end))
    };
    let insert = |text: String, marker: Option<String>, typed: bool| Op::Edit {
        edits: vec![(at, at, text)],
        marker,
        typed,
    };
    let op = match rng.below(100) {
        0..=19 => insert(
            format!("{marker}{}", filler(rng)),
            Some(marker.to_string()),
            false,
        ),
        20..=39 => insert(filler(rng), None, true),
        40..=46 => insert(
            format!("line {marker} 世界\nsecond 🎉 line\nthird\n"),
            Some(marker.to_string()),
            false,
        ),
        47..=51 => insert(
            format!("crlf {marker}\r\nwindows 🎉\r\n"),
            Some(marker.to_string()),
            false,
        ),
        52..=66 => {
            let (a, b) = range(rng)?;
            Op::Edit {
                edits: vec![(a, b, String::new())],
                marker: None,
                typed: false,
            }
        }
        67..=81 => {
            let (a, b) = range(rng)?;
            Op::Edit {
                edits: vec![(a, b, filler(rng))],
                marker: None,
                typed: false,
            }
        }
        82..=83 if format(text) != text => Op::Format,
        84..=91 => {
            let starts: Vec<usize> = std::iter::once(0)
                .chain(
                    text.match_indices('\n')
                        .map(|(i, _)| text[..=i].chars().count()),
                )
                .filter(|&s| s < chars.len())
                .collect();
            // The last line stays last.
            let lines = starts.len();
            if lines < 3 {
                return None;
            }
            let line = rng.below(lines - 1);
            let before = rng.below(lines);
            if before == line || before == line + 1 {
                return None;
            }
            let end = starts[line + 1];
            let moved: String = chars[starts[line]..end].iter().collect();
            Op::Move {
                line,
                before,
                markers: markers_in(&moved),
            }
        }
        _ if kind == Kind::VsCode => {
            // Two cursors typing the same text.
            let mut two = [*rng.pick(&points), *rng.pick(&points)];
            two.sort();
            if two[0] == two[1] {
                return None;
            }
            let t = filler(rng);
            Op::Edit {
                edits: vec![(two[0], two[0], t.clone()), (two[1], two[1], t)],
                marker: None,
                typed: true,
            }
        }
        _ => insert(filler(rng), None, true),
    };
    // Neovim reports changes as a diff of the lines (`docs/design.md`): a text inserted
    // inside a line right before a character it starts with is reported one character further
    // on (a new marker takes the old one's `«`, and a new `«` goes to the old one). The texts are
    // the same, but a peer deleting or moving the old one at that moment takes the new one's
    // character with it. That is Neovim's report, not a loss in duet (README, "In your
    // editor"); these runs keep such insertions out of Neovim's part. (Whole lines are aligned
    // by the bridge and stay in.)
    if let Op::Edit {
        edits,
        typed: false,
        ..
    } = &op
    {
        let (a, b, text) = &edits[0];
        if kind == Kind::Neovim && a == b && text.chars().next() == chars.get(*a).copied() {
            return None;
        }
    }
    Some(op)
}

/// The character ranges of a line move as two changes: delete the line, insert it elsewhere.
fn move_edits(text: &str, line: usize, before: usize) -> Vec<(usize, usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            text.match_indices('\n')
                .map(|(i, _)| text[..=i].chars().count()),
        )
        .collect();
    let (a, b) = (starts[line], starts[line + 1]);
    let moved: String = chars[a..b].iter().collect();
    let to = starts[before];
    if to < a {
        vec![(to, to, moved), (a, b, String::new())]
    } else {
        vec![(a, b, String::new()), (to, to, moved)]
    }
}

/// When and how much an editor types: at least `edits` edits, with random pauses that spread
/// them over the time from `started` to the end of the last fault, and on until that end.
#[derive(Clone, Copy)]
struct Pace {
    started: Instant,
    until: Duration,
    edits: usize,
    /// The mean pause between edits.
    mean: Duration,
}

impl Pace {
    fn going(&self, made: usize) -> bool {
        made < self.edits || self.started.elapsed() < self.until
    }

    fn pause(&self, rng: &mut Rng) -> Duration {
        Duration::from_millis(rng.below(2 * self.mean.as_millis() as usize + 1) as u64)
    }
}

async fn type_fake(ed: &FakeEditor, who: &str, seed: u64, pace: Pace) -> Typed {
    let mut rng = Rng::new(seed);
    let mut typed = Typed::default();
    let mut k = 0;
    let mut last_file = None;
    while pace.going(typed.edits) {
        let file = *rng.pick(&FILES);
        let marker = format!("«{who}.{k}»");
        k += 1;
        // Helix: now and then a completion menu held open 5–15 s while the others type, then
        // an item picked (the marker), after a preview that reverts what they typed meanwhile.
        if ed.kind == Kind::Helix && typed.edits % 400 == 200 && last_file.is_some() {
            helix_completion_held(ed, file, &marker, &mut rng).await;
            typed.edits += 1;
            typed.markers.push(marker);
            last_file = Some(file);
            continue;
        }
        let mut made = None;
        ed.edit_with(file, |text| {
            match next_op(text, &mut rng, &marker, ed.kind) {
                Some(Op::Edit { edits, marker, .. }) => {
                    made = Some((marker, Vec::new()));
                    edits
                }
                Some(Op::Move {
                    line,
                    before,
                    markers,
                }) => {
                    made = Some((None, markers));
                    move_edits(text, line, before)
                }
                Some(Op::Format) => {
                    made = Some((None, Vec::new()));
                    vec![(0, text.chars().count(), format(text))]
                }
                None => Vec::new(),
            }
        });
        if let Some((marker, moved)) = made {
            typed.edits += 1;
            typed.markers.extend(marker);
            typed.moved.extend(moved);
            last_file = Some(file);
        }
        // Helix completion previews: the version jumps, then the accepted item is sent.
        if ed.kind == Kind::Helix && rng.chance(5) {
            ed.helix_skip_versions(file, 1 + rng.below(3) as i64);
        }
        // A burst of undo, a pause while the others type, and as many redos.
        if let Some(file) = last_file.filter(|_| rng.chance(2)) {
            let steps = 1 + rng.below(3) as u64;
            let undone = ed.history("duet.undo", file, steps).await;
            tokio::time::sleep(pace.pause(&mut rng) * 4).await;
            let redone = ed.history("duet.redo", file, undone).await;
            // A step whose text the others deleted meanwhile has nothing left to redo.
            assert!(redone <= undone, "{}: redid {redone} of {undone}", ed.label);
            typed.undone += undone;
        }
        tokio::time::sleep(pace.pause(&mut rng)).await;
    }
    typed
}

/// Helix: completion requested at a random place of `file`, the menu open 5–15 s (peers' edits
/// arrive meanwhile), then `item` accepted there.
async fn helix_completion_held(ed: &FakeEditor, file: &str, item: &str, rng: &mut Rng) {
    let offset = ed.text(file).chars().count();
    ed.helix_begin_completion(file, offset).await;
    let saved: Vec<char> = ed.helix_saved(file).expect("saved").chars().collect();
    let mask = marker_mask(&saved);
    let points: Vec<usize> = (0..=saved.len())
        .filter(|&i| allowed(&saved, &mask, i, Kind::Helix))
        .collect();
    let at = *rng.pick(&points);
    let open = Duration::from_millis(5_000 + rng.below(10_000) as u64);
    tokio::time::sleep(open).await;
    ed.helix_accept_completion(file, at, at, item);
}

/// `duet.status` from a Neovim's bridge.
const NVIM_STATUS: &str =
    "return require('duet').client():request_sync('workspace/executeCommand', \
     {command = 'duet.status', arguments = {}}, 5000).result";

/// Lua helpers inside each Neovim: read a buffer with its change tick, and change it only if
/// it has not changed since (else the edit is decided again on the new text).
const LUA: &str = r#"
local files = ...
_G.torture = {}
for _, f in ipairs(files) do
  vim.cmd('silent edit ' .. vim.fn.fnameescape(f))
end
local function buf(path) return vim.fn.bufnr(path) end
function torture.get(path)
  local b = buf(path)
  local lines = vim.api.nvim_buf_get_lines(b, 0, -1, true)
  return { vim.api.nvim_buf_get_changedtick(b),
           table.concat(lines, '\n') .. (vim.bo[b].eol and '\n' or '') }
end
function torture.set(path, tick, sr, sc, er, ec, lines)
  local b = buf(path)
  if vim.api.nvim_buf_get_changedtick(b) ~= tick then return false end
  vim.api.nvim_buf_set_text(b, sr, sc, er, ec, lines)
  return true
end
function torture.move(path, tick, line, to)
  local b = buf(path)
  if vim.api.nvim_buf_get_changedtick(b) ~= tick then return false end
  vim.api.nvim_buf_call(b, function() vim.cmd(('silent %dmove %d'):format(line, to)) end)
  return true
end
function torture.format(path, tick)
  local b = buf(path)
  if vim.api.nvim_buf_get_changedtick(b) ~= tick then return false end
  local lines = vim.api.nvim_buf_get_lines(b, 0, -1, true)
  for i, l in ipairs(lines) do lines[i] = l:gsub(' +$', '') end
  vim.api.nvim_buf_set_lines(b, 0, -1, true, lines)
  return true
end
function torture.history(path, command, steps)
  local r = require('duet').client():request_sync('workspace/executeCommand',
    { command = command, arguments = { vim.uri_from_bufnr(buf(path)), steps } }, 5000)
  local result = r and r.result or {}
  return result.undone or result.redone or 0
end
function torture.type(path, tick, row, col, keys)
  local b = buf(path)
  if vim.api.nvim_buf_get_changedtick(b) ~= tick then return false end
  if vim.api.nvim_get_mode().mode ~= 'n' then return false end
  vim.api.nvim_win_set_buf(0, b)
  local line = vim.api.nvim_buf_get_lines(b, row, row + 1, true)[1]
  if col >= #line and #line > 0 then
    vim.api.nvim_win_set_cursor(0, { row + 1, #line - 1 })
    vim.api.nvim_input('a' .. keys .. '<Esc>')
  else
    vim.api.nvim_win_set_cursor(0, { row + 1, col })
    vim.api.nvim_input('i' .. keys .. '<Esc>')
  end
  return true
end
"#;

/// (row, byte column) of a character offset, in Neovim's lines.
fn nvim_pos(text: &str, char_offset: usize) -> (usize, usize) {
    let byte = text
        .char_indices()
        .nth(char_offset)
        .map(|(b, _)| b)
        .unwrap_or(text.len());
    let before = &text[..byte];
    let row = before.matches('\n').count();
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (row, col)
}

async fn type_nvim(nv: &mut Nvims, name: &str, who: &str, seed: u64, pace: Pace) -> Typed {
    let mut rng = Rng::new(seed);
    let mut typed = Typed::default();
    let mut k = 0;
    let mut last_file = None;
    while pace.going(typed.edits) {
        let file = *rng.pick(&FILES);
        let marker = format!("«{who}.{k}»");
        k += 1;
        let got = nv.lua(name, "return torture.get(...)", json!([file])).await;
        let (tick, text) = (got[0].clone(), got[1].as_str().unwrap_or("").to_string());
        let Some(op) = next_op(&text, &mut rng, &marker, Kind::Neovim) else {
            continue;
        };
        let done = match &op {
            // `:{line}move{to}` puts the line below line `to` (1-based): before 0-based `to`.
            Op::Move { line, before, .. } => {
                nv.lua(
                    name,
                    "return torture.move(...)",
                    json!([file, tick, line + 1, before]),
                )
                .await
            }
            Op::Edit {
                edits, typed: true, ..
            } if edits.len() == 1 && !edits[0].2.contains('\r') => {
                let (at, _, t) = &edits[0];
                let (row, col) = nvim_pos(&text, *at);
                let keys = t.replace('<', "<lt>").replace('\n', "<CR>");
                nv.lua(
                    name,
                    "return torture.type(...)",
                    json!([file, tick, row, col, keys]),
                )
                .await
            }
            // A formatter's whole-buffer rewrite: every line set anew.
            Op::Format => {
                nv.lua(name, "return torture.format(...)", json!([file, tick]))
                    .await
            }
            Op::Edit { edits, .. } => {
                // One change (a paste: Neovim turns CRLF into line breaks).
                let (a, b, t) = &edits[0];
                let (sr, sc) = nvim_pos(&text, *a);
                let (er, ec) = nvim_pos(&text, *b);
                let t = t.replace("\r\n", "\n");
                let lines: Vec<&str> = t.split('\n').collect();
                nv.lua(
                    name,
                    "return torture.set(...)",
                    json!([file, tick, sr, sc, er, ec, lines]),
                )
                .await
            }
        };
        if done == json!(true) {
            typed.edits += 1;
            match op {
                Op::Edit { marker, .. } => typed.markers.extend(marker),
                Op::Move { markers, .. } => typed.moved.extend(markers),
                Op::Format => {}
            }
            last_file = Some(file);
        }
        // A burst of undo, a pause while the others type, and as many redos.
        if let Some(file) = last_file.filter(|_| rng.chance(2)) {
            let steps = 1 + rng.below(3) as u64;
            let history = "return torture.history(...)";
            let undone = nv
                .lua(name, history, json!([file, "duet.undo", steps]))
                .await;
            tokio::time::sleep(pace.pause(&mut rng) * 4).await;
            let redone = nv
                .lua(name, history, json!([file, "duet.redo", undone]))
                .await;
            assert!(
                redone.as_u64() <= undone.as_u64(),
                "{name}: redid {redone} of {undone}"
            );
            typed.undone += undone.as_u64().unwrap_or(0);
        }
        // Messages popping up while typing: the status and the peers, many lines long.
        if rng.chance(1) {
            nv.cmd(
                name,
                if rng.chance(50) {
                    "DuetStatus"
                } else {
                    "DuetPeers"
                },
            )
            .await;
        }
        tokio::time::sleep(pace.pause(&mut rng)).await;
    }
    let _ = nv
        .wait_for(
            name,
            "typing to end",
            "return vim.api.nvim_get_mode().mode",
            json!([]),
            Duration::from_secs(30),
            |m| m == "n",
        )
        .await;
    typed
}
