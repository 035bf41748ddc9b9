//! Each server's own limit, found by a load generator that is not the bottleneck: this process
//! (Rust, one thread, pinned to core 0) drives the server (pinned to core 1) up a ladder of
//! loads until its p99 latency passes 50 ms. Servers: duet on one node, duet with the relay
//! (`--redis-url`: every edit also published to Redis), the reference `y-websocket` server and
//! `@hocuspocus/server` (`tests/node`), in one run.
//!
//! A load is rooms of 5 peers, each peer making 10 edits a second into its own file of the room
//! (a Yjs document per peer holding only its own text, so that making an edit costs the
//! generator nothing). Each edit inserts a numbered marker; a peer's received updates are
//! scanned for markers (not applied), and the latency runs from the edit's send to its arrival
//! at each of the 4 other peers. A step runs 8 s; the last 6 are measured. The limit is the
//! highest step whose p99 stayed under 50 ms with nothing missing; the next step is shown too.
//! Then one room of 40 peers at 10 edits/s each, for fan-out inside a room. The generator's
//! own ceiling shows as a server far from a full core when latency climbs.
//!
//! ```sh
//! cargo build --release -p duet-e2e --bin bench-limits && cargo build --release -p duet-server
//! cargo run --release -p duet-e2e --bin bench-limits [-- --quick]
//! ```
//! Needs `taskset` (util-linux), Node with `tests/node`'s modules, `redis-server` and PostgreSQL.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use duet_e2e::pg::Cluster;
use duet_e2e::redis::Redis;
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::stats::{cpu_seconds, machine, quantile, Args};
use duet_e2e::workspace;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::encoding::write::Write;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{Doc, Map, Text, TextPrelim, Transact};

const PEERS: usize = 5;
/// The one big room: its peers, each at `RATE`.
const BIG_ROOM: usize = 40;
const RATE: f64 = 10.0;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(6);
const P99_LIMIT: f64 = 50.0;
/// The marker: `§` (0xC2 0xA7) and 8 digits.
const MARK: [u8; 2] = [0xc2, 0xa7];

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

/// Marker numbers in a received frame.
fn markers(data: &[u8]) -> impl Iterator<Item = u64> + '_ {
    data.windows(10).filter_map(|w| {
        if w[..2] != MARK {
            return None;
        }
        std::str::from_utf8(&w[2..]).ok()?.parse().ok()
    })
}

struct Shared {
    sent: Mutex<HashMap<u64, Instant>>,
    latencies: Mutex<Vec<f64>>,
    next: std::sync::atomic::AtomicU64,
    measuring: std::sync::atomic::AtomicBool,
    expected: std::sync::atomic::AtomicU64,
}

/// One peer: joins, then edits at `RATE` until `until`, while its reader records latencies.
async fn peer(
    url: String,
    protocol: Protocol,
    room: String,
    shared: Rc<Shared>,
    until: Instant,
    others: u64,
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
    // The reference servers send a peer its own updates back: those are not latencies.
    let own: Rc<std::cell::RefCell<std::collections::HashSet<u64>>> = Rc::default();
    let empty_sv = yrs::StateVector::default().encode_v1();
    let _ = sink.send(sync(protocol, &room, 0, &empty_sv)).await;
    let reader = {
        let (shared, own) = (shared.clone(), own.clone());
        async move {
            use std::sync::atomic::Ordering::Relaxed;
            while let Some(Ok(frame)) = stream.next().await {
                let WsMessage::Binary(data) = frame else {
                    continue;
                };
                let now = Instant::now();
                if !shared.measuring.load(Relaxed) {
                    continue;
                }
                for id in markers(&data) {
                    if own.borrow_mut().remove(&id) {
                        continue;
                    }
                    let sent = shared.sent.lock().expect("sent").get(&id).copied();
                    if let Some(sent) = sent {
                        shared
                            .latencies
                            .lock()
                            .expect("latencies")
                            .push((now - sent).as_secs_f64() * 1e3);
                    }
                }
            }
        }
    };
    let writer = async {
        use std::sync::atomic::Ordering::Relaxed;
        let doc = Doc::new();
        let files = doc.get_or_insert_map("files");
        let name = format!("p{}.txt", uuid::Uuid::new_v4().simple());
        let (text, first) = {
            let mut txn = doc.transact_mut();
            let text = files.insert(&mut txn, name.as_str(), TextPrelim::new(""));
            (text, txn.encode_update_v1())
        };
        let _ = sink.send(sync(protocol, &room, 2, &first)).await;
        let period = Duration::from_secs_f64(1.0 / RATE);
        // Peers start spread over one period.
        let offset = period.mul_f64(rand_unit(&name));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < until {
            ticks.tick().await;
            let id = shared.next.fetch_add(1, Relaxed);
            let update = {
                let mut txn = doc.transact_mut();
                let len = text.len(&txn);
                text.insert(&mut txn, len, &format!("§{:08}", id % 100_000_000));
                txn.encode_update_v1()
            };
            own.borrow_mut().insert(id % 100_000_000);
            if shared.measuring.load(Relaxed) {
                shared
                    .sent
                    .lock()
                    .expect("sent")
                    .insert(id % 100_000_000, Instant::now());
                shared.expected.fetch_add(others, Relaxed);
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

/// Pins every thread of `pid` to `core`.
fn pin(pid: u32, core: u32) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux)");
    assert!(status.success(), "taskset -p {pid}");
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

/// One step: `rooms` rooms of `peers` peers. Returns (p50, p99, delivered share, server CPU %).
async fn step(target: &Target, rooms: usize, peers: usize) -> (f64, f64, f64, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    let shared = Rc::new(Shared {
        sent: Mutex::new(HashMap::new()),
        latencies: Mutex::new(Vec::new()),
        next: Default::default(),
        measuring: Default::default(),
        expected: Default::default(),
    });
    let until = Instant::now() + WARMUP + MEASURE + Duration::from_secs(2);
    let local = tokio::task::LocalSet::new();
    for _ in 0..rooms {
        let (url, name) = target.room().await;
        for _ in 0..peers {
            local.spawn_local(peer(
                url.clone(),
                target.protocol,
                name.clone(),
                shared.clone(),
                until,
                (peers - 1) as u64,
            ));
        }
    }
    let cpu = local
        .run_until(async {
            tokio::time::sleep(WARMUP + Duration::from_secs(2)).await;
            let cpu0 = cpu_seconds(target.pid);
            shared.measuring.store(true, Relaxed);
            tokio::time::sleep(MEASURE).await;
            shared.measuring.store(false, Relaxed);
            let cpu = (cpu_seconds(target.pid) - cpu0) / MEASURE.as_secs_f64() * 100.0;
            // Late arrivals of measured edits still count.
            tokio::time::sleep(Duration::from_millis(500)).await;
            cpu
        })
        .await;
    drop(local);
    let mut latencies = shared.latencies.lock().expect("latencies").clone();
    latencies.sort_by(f64::total_cmp);
    let expected = shared.expected.load(Relaxed).max(1) as f64;
    let delivered = latencies.len() as f64 / expected;
    if latencies.is_empty() {
        return (f64::INFINITY, f64::INFINITY, 0.0, cpu);
    }
    (
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        delivered,
        cpu,
    )
}

fn main() {
    let args = Args::parse();
    println!("{}", machine());
    pin(std::process::id(), 0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let ladder: Vec<usize> = args.pick(vec![10, 20, 40, 80, 120, 160, 240, 320, 480], vec![10, 40]);
    println!(
        "bench-limits: rooms of {PEERS} peers × {RATE} edits/s each; generator on core 0 (one thread), server on core 1; a step is {} s measured; limit: p99 < {P99_LIMIT} ms, nothing missing",
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
        targets.push(Target {
            name,
            protocol,
            pid: child.id(),
            base: format!("ws://127.0.0.1:{port}"),
            duet: None,
        });
        children.push(child);
    }
    println!("| server | edits/s | rooms | peers | p50 (ms) | p99 (ms) | delivered | server CPU (% of core 1) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut limits = Vec::new();
    for target in &targets {
        let mut limit = 0.0;
        for &rooms in &ladder {
            let load = rooms as f64 * PEERS as f64 * RATE;
            let (p50, p99, delivered, cpu) = step(target, rooms, PEERS).await;
            println!(
                "| {} | {load:.0} | {rooms} | {} | {p50:.1} | {p99:.1} | {:.1}% | {cpu:.0} |",
                target.name,
                rooms * PEERS,
                delivered * 100.0
            );
            if p99 >= P99_LIMIT || delivered < 0.99 {
                break;
            }
            limit = load;
        }
        limits.push((target.name, limit));
    }
    // Fan-out inside one room.
    println!(
        "one room of {BIG_ROOM} peers × {RATE} edits/s ({} deliveries/s):",
        BIG_ROOM * (BIG_ROOM - 1) * RATE as usize
    );
    println!("| server | p50 (ms) | p99 (ms) | delivered | server CPU (% of core 1) |");
    println!("| --- | --- | --- | --- | --- |");
    for target in &targets {
        let (p50, p99, delivered, cpu) = step(target, 1, BIG_ROOM).await;
        println!(
            "| {} | {p50:.1} | {p99:.1} | {:.1}% | {cpu:.0} |",
            target.name,
            delivered * 100.0
        );
    }
    println!(
        "limits (edits/s at p99 < {P99_LIMIT} ms on one core): {}",
        limits
            .iter()
            .map(|(name, limit)| format!("{name} {limit:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}
