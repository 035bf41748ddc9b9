//! Each server's own limit, found by a load generator that is not the bottleneck: this process
//! (Rust, one thread, pinned to core 0) drives the server (pinned to core 1) up a ladder of
//! loads until its p99 latency passes 50 ms; both run at nice −10 where that is allowed, so that
//! other processes on a shared machine add less to the latencies. Servers: duet on one node, duet with the relay
//! (`--redis-url`: every edit also published to Redis), the reference `y-websocket` server and
//! `@hocuspocus/server` (`tests/node`), in one run; the whole is repeated (`--runs`, 3 by
//! default) and limits are given as medians, with ratios taken within each run.
//!
//! A load is rooms of 5 peers, each peer making 10 edits a second into its own file of the room
//! (a Yjs document per peer holding only its own text, so that making an edit costs the
//! generator little). Each edit inserts a marker holding the sending peer and its send time;
//! a peer's received frames are scanned for markers (no Yjs decoding, no lookup table), and the
//! latency runs from the edit's send to its arrival at each of the 4 other peers. A step runs
//! 10.5 s; 6 s are measured. The limit is the highest step whose p99 stayed under 50 ms with
//! nothing missing; the next step is shown too. The generator's own CPU (% of core 0) is shown
//! beside the server's: a failing step with the generator near a full core is generator-bound,
//! and the server's limit is then only known to be at least the step below. Then one room of
//! 40 peers at 10 and at 20 edits/s each, for fan-out inside a room.
//!
//! ```sh
//! cargo build --release -p duet-e2e --bin bench-limits && cargo build --release -p duet-server
//! cargo run --release -p duet-e2e --bin bench-limits [-- --quick] [-- --runs N]
//! ```
//! Needs `taskset` (util-linux), Node with `tests/node`'s modules, `redis-server` and PostgreSQL.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use duet_e2e::pg::Cluster;
use duet_e2e::redis::Redis;
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::stats::{cpu_seconds, machine, quantile, Args, Runs};
use duet_e2e::workspace;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::encoding::write::Write;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{Doc, Map, Text, TextPrelim, Transact};

const PEERS: usize = 5;
/// The one big room: its peers.
const BIG_ROOM: usize = 40;
/// Edits a second per peer; the big room also runs at twice this.
const RATE: f64 = 10.0;
const WARMUP: Duration = Duration::from_secs(4);
const MEASURE: Duration = Duration::from_secs(6);
const P99_LIMIT: f64 = 50.0;
/// A failing step with the generator above this share of its core is generator-bound.
const GENERATOR_BOUND: f64 = 85.0;
/// The marker: `§` (0xC2 0xA7), the sending peer (6 digits), its send time in µs since the
/// step's start (10 digits).
const MARK: [u8; 2] = [0xc2, 0xa7];
const PEER_DIGITS: usize = 6;
const TIME_DIGITS: usize = 10;
const MARKER_LEN: usize = MARK.len() + PEER_DIGITS + TIME_DIGITS;

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Yws,
    Hocuspocus,
}

/// Frames one y-protocols message for the protocol: Hocuspocus prefixes the document name.
fn framed(protocol: Protocol, room: &str, body: impl FnOnce(&mut EncoderV1)) -> Vec<u8> {
    let mut encoder = EncoderV1::new();
    if protocol == Protocol::Hocuspocus {
        encoder.write_string(room);
    }
    body(&mut encoder);
    encoder.to_vec()
}

fn sync(protocol: Protocol, room: &str, step: u32, payload: &[u8]) -> WsMessage {
    WsMessage::Binary(
        framed(protocol, room, |e| {
            e.write_var(0u32);
            e.write_var(step);
            e.write_buf(payload);
        })
        .into(),
    )
}

/// The ASCII decimal number in `digits`, if it is one.
fn number(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// The (peer, send time in µs) of each marker in a received frame: its bytes are scanned, the
/// Yjs update is not decoded.
fn markers(data: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at + MARKER_LEN <= data.len() {
            let here = at;
            at += 1;
            if data[here] != MARK[0] || data[here + 1] != MARK[1] {
                continue;
            }
            let digits = &data[here + MARK.len()..here + MARKER_LEN];
            if let (Some(peer), Some(time)) = (
                number(&digits[..PEER_DIGITS]),
                number(&digits[PEER_DIGITS..]),
            ) {
                at = here + MARKER_LEN;
                return Some((peer, time));
            }
        }
        None
    })
}

/// What the peers of one step share (one thread: plain cells).
struct Shared {
    start: Instant,
    /// The measured window, in µs since `start`: edits sent in it count.
    window: Cell<(u64, u64)>,
    latencies: RefCell<Vec<f64>>,
    expected: Cell<u64>,
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        (at - self.start).as_micros() as u64
    }

    fn measured(&self, sent: u64) -> bool {
        let (from, to) = self.window.get();
        (from..to).contains(&sent)
    }
}

/// One peer: joins, then edits at `rate` until `until`, while its reader records latencies.
#[allow(clippy::too_many_arguments)]
async fn peer(
    url: String,
    protocol: Protocol,
    room: String,
    shared: Rc<Shared>,
    until: Instant,
    me: u64,
    others: u64,
    rate: f64,
) {
    let Ok((socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    if protocol == Protocol::Hocuspocus {
        let auth = framed(protocol, &room, |e| {
            e.write_var(2u32);
            e.write_var(0u32);
            e.write_string("");
        });
        let _ = sink.send(WsMessage::Binary(auth.into())).await;
    }
    let empty_sv = yrs::StateVector::default().encode_v1();
    let _ = sink.send(sync(protocol, &room, 0, &empty_sv)).await;
    let reader = {
        let shared = shared.clone();
        async move {
            while let Some(Ok(frame)) = stream.next().await {
                let WsMessage::Binary(data) = frame else {
                    continue;
                };
                let now = shared.micros(Instant::now());
                for (from, sent) in markers(&data) {
                    // The reference servers send a peer its own updates back: not latencies.
                    if from != me && shared.measured(sent) {
                        let ms = now.saturating_sub(sent) as f64 / 1e3;
                        shared.latencies.borrow_mut().push(ms);
                    }
                }
            }
        }
    };
    let writer = async {
        let doc = Doc::new();
        let files = doc.get_or_insert_map("files");
        let name = format!("p{}.txt", uuid::Uuid::new_v4().simple());
        let (text, first) = {
            let mut txn = doc.transact_mut();
            let text = files.insert(&mut txn, name.as_str(), TextPrelim::new(""));
            (text, txn.encode_update_v1())
        };
        let _ = sink.send(sync(protocol, &room, 2, &first)).await;
        let period = Duration::from_secs_f64(1.0 / rate);
        // Peers start spread over one period.
        let offset = period.mul_f64(rand_unit(&name));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut marker = String::with_capacity(MARKER_LEN);
        while Instant::now() < until {
            ticks.tick().await;
            let sent = shared.micros(Instant::now());
            marker.clear();
            use std::fmt::Write as _;
            let _ = write!(marker, "§{me:06}{sent:010}");
            let update = {
                let mut txn = doc.transact_mut();
                let len = text.len(&txn);
                text.insert(&mut txn, len, &marker);
                txn.encode_update_v1()
            };
            if shared.measured(sent) {
                shared.expected.set(shared.expected.get() + others);
            }
            if sink.send(sync(protocol, &room, 2, &update)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

/// A number in [0, 1) from a name (spreads the peers' start).
fn rand_unit(name: &str) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    name.hash(&mut hasher);
    (hasher.finish() % 1000) as f64 / 1000.0
}

/// A server under test: where rooms are, how to make one, its protocol and process.
struct Target {
    name: &'static str,
    protocol: Protocol,
    pid: u32,
    base: String,
    duet: Option<Server>,
}

impl Target {
    /// A room's URL and its name on the wire.
    async fn room(&self) -> (String, String) {
        match &self.duet {
            Some(server) => {
                let room = server.create_room_with(&[]).await;
                (server.ws_url(&room), room.id)
            }
            None => {
                let name = uuid::Uuid::new_v4().to_string();
                let url = match self.protocol {
                    Protocol::Yws => format!("{}/{name}", self.base),
                    Protocol::Hocuspocus => self.base.clone(),
                };
                (url, name)
            }
        }
    }
}

/// Pins every thread of `pid` to `core` and raises their priority to nice −10 where allowed,
/// so that other processes on a shared machine add less to the measured latencies. Returns
/// whether the priority was raised.
fn pin(pid: u32, core: u32) -> bool {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux)");
    assert!(status.success(), "taskset -p {pid}");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let tids: Vec<String> = tasks
        .filter_map(|task| Some(task.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    Command::new("renice")
        .args(["-n", "-10", "-p"])
        .args(&tids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A Node reference server, pinned to core 1 from its start.
fn node_server(script: &str) -> (Child, u16) {
    let mut child = Command::new("taskset")
        .args([
            "-c",
            "1",
            "node",
            script,
            "--port",
            "0",
            "--exit-on-stdin-eof",
        ])
        .current_dir(workspace().join("tests/node"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{script} printed {line:?}"));
    (child, port)
}

/// One step's figures.
#[derive(Clone, Copy)]
struct Step {
    p50: f64,
    p99: f64,
    delivered: f64,
    /// % of core 1 and of core 0.
    server_cpu: f64,
    generator_cpu: f64,
}

impl Step {
    fn passed(&self) -> bool {
        self.p99 < P99_LIMIT && self.delivered >= 0.99
    }

    fn generator_bound(&self) -> bool {
        self.generator_cpu >= GENERATOR_BOUND
    }

    fn verdict(&self) -> &'static str {
        match (self.passed(), self.generator_bound()) {
            (true, _) => "pass",
            (false, false) => "fail",
            (false, true) => "fail, generator-bound",
        }
    }
}

/// One step: `rooms` rooms of `peers` peers at `rate` edits/s each.
async fn step(target: &Target, rooms: usize, peers: usize, rate: f64) -> Step {
    let shared = Rc::new(Shared {
        start: Instant::now(),
        window: Cell::new((u64::MAX, u64::MAX)),
        latencies: RefCell::default(),
        expected: Cell::new(0),
    });
    let until = Instant::now() + WARMUP + MEASURE;
    let local = tokio::task::LocalSet::new();
    let mut me = 0;
    for _ in 0..rooms {
        let (url, name) = target.room().await;
        for _ in 0..peers {
            me += 1;
            local.spawn_local(peer(
                url.clone(),
                target.protocol,
                name.clone(),
                shared.clone(),
                until,
                me,
                (peers - 1) as u64,
                rate,
            ));
        }
    }
    let (server_cpu, generator_cpu) = local
        .run_until(async {
            tokio::time::sleep(WARMUP - Duration::from_millis(500)).await;
            let me = std::process::id();
            let cpu0 = (cpu_seconds(target.pid), cpu_seconds(me));
            let from = shared.micros(Instant::now());
            shared.window.set((from, from + MEASURE.as_micros() as u64));
            tokio::time::sleep(MEASURE).await;
            let share = |now: f64, then: f64| (now - then) / MEASURE.as_secs_f64() * 100.0;
            let cpu = (
                share(cpu_seconds(target.pid), cpu0.0),
                share(cpu_seconds(me), cpu0.1),
            );
            // Late arrivals of measured edits still count.
            tokio::time::sleep(Duration::from_millis(500)).await;
            cpu
        })
        .await;
    drop(local);
    let mut latencies = shared.latencies.take();
    latencies.sort_by(f64::total_cmp);
    let expected = shared.expected.get().max(1) as f64;
    let (p50, p99) = if latencies.is_empty() {
        (f64::INFINITY, f64::INFINITY)
    } else {
        (quantile(&latencies, 0.5), quantile(&latencies, 0.99))
    };
    Step {
        p50,
        p99,
        delivered: latencies.len() as f64 / expected,
        server_cpu,
        generator_cpu,
    }
}

/// [`step`], printed as a row of the steps' table.
async fn shown_step(run: usize, target: &Target, rooms: usize, peers: usize, rate: f64) -> Step {
    let s = step(target, rooms, peers, rate).await;
    println!(
        "| {run} | {} | {:.0} | {rooms} × {peers} | {:.1} | {:.1} | {:.1}% | {:.0} | {:.0} | {} |",
        target.name,
        (rooms * peers) as f64 * rate,
        s.p50,
        s.p99,
        s.delivered * 100.0,
        s.server_cpu,
        s.generator_cpu,
        s.verdict()
    );
    s
}

fn main() {
    let args = Args::parse();
    println!("{}", machine());
    let raised = pin(std::process::id(), 0);
    println!(
        "priority: generator and servers at nice −10: {}",
        if raised { "yes" } else { "no (not allowed)" }
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args));
}

/// One server's limit in one run: the last passing step's edits/s, and whether the step above
/// it failed with the generator near a full core (then the server's limit is at least that).
#[derive(Clone, Copy)]
struct Limit {
    edits: f64,
    generator_bound: bool,
}

async fn run(args: Args) {
    let ladder: Vec<usize> = args.pick(
        vec![10, 20, 40, 80, 120, 160, 240, 320, 400, 480],
        vec![10, 40],
    );
    let big_rates = [RATE, 2.0 * RATE];
    println!(
        "bench-limits: rooms of {PEERS} peers × {RATE} edits/s each; generator on core 0 (one thread), server on core 1; {} run(s); a step is {} s measured; limit: p99 < {P99_LIMIT} ms, nothing missing; a failing step with the generator ≥ {GENERATOR_BOUND} % of its core is generator-bound",
        args.runs,
        MEASURE.as_secs()
    );
    let cluster = Cluster::start();
    let db = Database::with_url(Backend::Postgres, cluster.url());
    let redis = Redis::start().await;
    let raised = [
        "--max-rooms-per-minute",
        "100000",
        "--max-connections",
        "8000",
        // The big room's 40 peers (the default is 32).
        "--max-peers",
        "64",
    ];
    let mut targets = Vec::new();
    for (name, relay) in [("duet", false), ("duet + relay", true)] {
        let mut flags: Vec<&str> = raised.to_vec();
        let url = redis.url();
        if relay {
            flags.extend(["--redis-url", &url]);
        }
        let server = Server::start(&db, &flags).await;
        pin(server.pid(), 1);
        targets.push(Target {
            name,
            protocol: Protocol::Yws,
            pid: server.pid(),
            base: String::new(),
            duet: Some(server),
        });
    }
    let mut children = Vec::new();
    for (name, script, protocol) in [
        ("y-websocket", "refserver.mjs", Protocol::Yws),
        ("hocuspocus", "hocuspocus.mjs", Protocol::Hocuspocus),
    ] {
        let (child, port) = node_server(script);
        pin(child.id(), 1);
        targets.push(Target {
            name,
            protocol,
            pid: child.id(),
            base: format!("ws://127.0.0.1:{port}"),
            duet: None,
        });
        children.push(child);
    }
    println!("| run | server | edits/s | rooms × peers | p50 (ms) | p99 (ms) | delivered | server CPU (% of core 1) | generator CPU (% of core 0) | step |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    // limits[run][target], big[rate][target]
    let mut limits: Vec<Vec<Limit>> = Vec::new();
    let mut big: Vec<Vec<Vec<Step>>> = vec![vec![Vec::new(); targets.len()]; big_rates.len()];
    for run in 1..=args.runs {
        let mut this_run = Vec::new();
        for target in &targets {
            let mut limit = Limit {
                edits: 0.0,
                generator_bound: false,
            };
            for &rooms in &ladder {
                let load = rooms as f64 * PEERS as f64 * RATE;
                let s = shown_step(run, target, rooms, PEERS, RATE).await;
                if !s.passed() {
                    limit.generator_bound = s.generator_bound();
                    break;
                }
                limit.edits = load;
            }
            this_run.push(limit);
        }
        limits.push(this_run);
        // Fan-out inside one room.
        for (r, &rate) in big_rates.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                big[r][t].push(shown_step(run, target, 1, BIG_ROOM, rate).await);
            }
        }
    }
    summary(&targets, &limits, &big_rates, &big);
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Medians over the runs: each server's limit with its ratios to the reference servers (taken
/// within each run), and the big room's latencies.
fn summary(targets: &[Target], limits: &[Vec<Limit>], big_rates: &[f64], big: &[Vec<Vec<Step>>]) {
    let index = |name: &str| targets.iter().position(|t| t.name == name).expect("target");
    let (yws, hocus) = (index("y-websocket"), index("hocuspocus"));
    let over = |f: &dyn Fn(&[Limit]) -> f64| Runs(limits.iter().map(|run| f(run)).collect());
    println!(
        "limits, medians of {} run(s) (min–max) — edits/s at p99 < {P99_LIMIT} ms on one core; ≥: generator-bound in some run:",
        limits.len()
    );
    println!("| server | limit (edits/s) | × y-websocket | × Hocuspocus |");
    println!("| --- | --- | --- | --- |");
    for (t, target) in targets.iter().enumerate() {
        let bound = limits.iter().any(|run| run[t].generator_bound);
        let limit = over(&|run| run[t].edits);
        // Only runs where the reference passed a step give a ratio.
        let ratio = |reference: usize| {
            let ratios: Vec<f64> = limits
                .iter()
                .filter(|run| run[reference].edits > 0.0)
                .map(|run| run[t].edits / run[reference].edits)
                .collect();
            if ratios.is_empty() {
                "—".to_string()
            } else {
                Runs(ratios).show(1).to_string()
            }
        };
        println!(
            "| {} | {}{} | {} | {} |",
            target.name,
            if bound { "≥ " } else { "" },
            limit.show(0),
            ratio(yws),
            ratio(hocus)
        );
    }
    for (r, rate) in big_rates.iter().enumerate() {
        println!(
            "one room of {BIG_ROOM} peers × {rate} edits/s ({} deliveries/s), medians of {} run(s):",
            (BIG_ROOM * (BIG_ROOM - 1)) as f64 * rate,
            limits.len()
        );
        println!(
            "| server | p50 (ms) | p99 (ms) | delivered (%) | server CPU (%) | generator CPU (%) |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for (t, target) in targets.iter().enumerate() {
            let of = |f: fn(&Step) -> f64| Runs(big[r][t].iter().map(f).collect());
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                target.name,
                of(|s| s.p50).show(1),
                of(|s| s.p99).show(1),
                of(|s| s.delivered * 100.0).show(1),
                of(|s| s.server_cpu).show(0),
                of(|s| s.generator_cpu).show(0)
            );
        }
    }
}
