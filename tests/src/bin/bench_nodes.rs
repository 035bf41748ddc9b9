//! Several nodes: what the relay costs. Three set-ups, each on a private PostgreSQL:
//!
//! - one node without Redis: a writer and a reader on it;
//! - two nodes relaying through a private Redis: the writer and a reader on the first node
//!   (same-node latency), a reader on the second (cross-node latency).
//!
//! The writer makes one edit at a time (a character appended to its own file, 10 ms apart) and
//! each reader's arrival of the update is timed from the send: latency p50/p99. Per edit it
//! also prints the CPU time of each node (user + system, from `/proc`) and the relay's
//! messages and bytes published to Redis (heartbeats of the run included). Each figure is the
//! median of `--runs` runs (3; 1 with `--quick`, which also makes fewer edits).
//!
//! Then idle connections: 10,000 peers (1,000 with `--quick`) in rooms of 10 on one node with
//! the relay, that do nothing once joined: the node's memory (RSS) and descriptors, per peer.
//! Each side holds a descriptor per peer: the limit (`ulimit -n`) must be above 10,000.
//!
//! ```sh
//! cargo build --release -p duet-e2e --bin bench-nodes && cargo build --release -p duet-server
//! ulimit -n 20000; cargo run --release -p duet-e2e --bin bench-nodes [-- --quick] [--runs N]
//! ```

use std::time::{Duration, Instant};

use duet_e2e::pg::Cluster;
use duet_e2e::redis::Redis;
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::stats::{cpu_seconds, machine, Args, Latency, Runs};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, StateVector, Text, TextPrelim, Transact};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw y-websocket connection, in the room: its sync step 1 has been answered.
async fn connect(url: &str) -> Socket {
    let mut socket = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket")
        .0;
    let hello = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    socket
        .send(WsMessage::Binary(hello.into()))
        .await
        .expect("send");
    next_update(&mut socket).await;
    socket
}

/// Waits for the next document update (or sync step 2) on `socket`; anything else is skipped.
async fn next_update(socket: &mut Socket) {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an update within 10 s")
            .expect("open")
            .expect("frame");
        if let WsMessage::Binary(data) = frame {
            if let Ok(Message::Sync(SyncMessage::Update(_) | SyncMessage::SyncStep2(_))) =
                Message::decode_v1(&data)
            {
                return;
            }
        }
    }
}

/// A process's resident memory in MiB and its open descriptors.
fn footprint(pid: u32) -> (f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss_kb / 1024.0, fds)
}

/// `peers` idle peers in rooms of 10 on `node`: its memory and descriptors before and after.
async fn idle(node: &Server, peers: usize) {
    let (rss0, fds0) = footprint(node.pid());
    let mut sockets = Vec::with_capacity(peers);
    let mut room = None;
    for i in 0..peers {
        if i % 10 == 0 {
            room = Some(node.create_room_with(&[("a.txt", "idle\n")]).await);
        }
        let room = room.as_ref().expect("a room");
        sockets.push(connect(&node.ws_url(room)).await);
    }
    // Heartbeats and peer counts of every room have gone round.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, fds) = footprint(node.pid());
    println!(
        "idle: {peers} peers in {} rooms on one node with the relay: RSS {rss0:.0} → {rss:.0} MiB ({:.1} KiB a peer, rooms included), descriptors {fds0} → {fds}",
        peers.div_ceil(10),
        (rss - rss0) * 1024.0 / peers as f64
    );
    assert_eq!(node.metric("duet_connections_open").await as usize, peers);
}

/// Relay messages and bytes the nodes have published so far.
async fn published(nodes: &[Server]) -> (u64, u64) {
    let mut sum = (0, 0);
    for node in nodes {
        sum.0 += node.metric("duet_relay_published_total").await;
        sum.1 += node.metric("duet_relay_published_bytes_total").await;
    }
    sum
}

/// One run's figures.
struct Figures {
    /// Per reader: latencies.
    latency: Vec<Latency>,
    /// Per node: CPU milliseconds per edit.
    cpu_ms: Vec<f64>,
    /// Relay messages and bytes published per edit (all nodes).
    published: f64,
    bytes: f64,
}

/// The writer on `nodes[0]`, one reader on each of `readers` (node indices); `edits` edits.
async fn run(nodes: &[Server], readers: &[usize], room: &RoomRef, edits: usize) -> Figures {
    let mut writer = connect(&nodes[0].ws_url(room)).await;
    let mut sockets = Vec::new();
    for &i in readers {
        sockets.push(connect(&nodes[i].ws_url(room)).await);
    }
    // The writer's own file, then one character per edit.
    let doc = Doc::new();
    let files = doc.get_or_insert_map("files");
    let name = format!("w{}.txt", uuid::Uuid::new_v4().simple());
    let (text, first) = {
        let mut txn = doc.transact_mut();
        let text = files.insert(&mut txn, name.as_str(), TextPrelim::new(""));
        (text, txn.encode_update_v1())
    };
    let send = |update: Vec<u8>| {
        WsMessage::Binary(
            Message::Sync(SyncMessage::Update(update))
                .encode_v1()
                .into(),
        )
    };
    writer.send(send(first)).await.expect("send");
    for socket in &mut sockets {
        next_update(socket).await;
    }
    // Nodes settle (the handshakes, loads and heartbeats of joining) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = published(nodes).await;
    let cpu_before: Vec<f64> = nodes.iter().map(|n| cpu_seconds(n.pid())).collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(edits); readers.len()];
    for _ in 0..edits {
        let update = {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, "x");
            txn.encode_update_v1()
        };
        let sent = Instant::now();
        writer.send(send(update)).await.expect("send");
        for (socket, samples) in sockets.iter_mut().zip(&mut samples) {
            next_update(socket).await;
            samples.push(sent.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_ms = nodes
        .iter()
        .zip(&cpu_before)
        .map(|(n, before)| (cpu_seconds(n.pid()) - before) * 1e3 / edits as f64)
        .collect();
    let after = published(nodes).await;
    Figures {
        latency: samples.iter().map(|s| Latency::of(s)).collect(),
        cpu_ms,
        published: (after.0 - before.0) as f64 / edits as f64,
        bytes: (after.1 - before.1) as f64 / edits as f64,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let edits = args.pick(500, 100);
    println!("{}", machine());
    println!(
        "bench-nodes: {edits} edits, one at a time 10 ms apart, {} run(s); medians (min–max)",
        args.runs
    );
    let cluster = Cluster::start();
    let db = Database::with_url(Backend::Postgres, cluster.url());
    let redis = Redis::start().await;

    let single = [Server::start(&db, &[]).await];
    let relayed = [
        Server::start(&db, &["--redis-url", &redis.url()]).await,
        Server::start(&db, &["--redis-url", &redis.url()]).await,
    ];
    let (mut one_latency, mut one_cpu) = ((Runs::default(), Runs::default()), Runs::default());
    let mut same = (Runs::default(), Runs::default());
    let mut cross = (Runs::default(), Runs::default());
    let (mut author_cpu, mut reader_cpu) = (Runs::default(), Runs::default());
    let (mut messages, mut bytes) = (Runs::default(), Runs::default());
    for _ in 0..args.runs {
        let room = single[0].create_room_with(&[]).await;
        let f = run(&single, &[0], &room, edits).await;
        one_latency.0.push(f.latency[0].p50);
        one_latency.1.push(f.latency[0].p99);
        one_cpu.push(f.cpu_ms[0]);

        let room = relayed[0].create_room_with(&[]).await;
        let f = run(&relayed, &[0, 1], &room, edits).await;
        same.0.push(f.latency[0].p50);
        same.1.push(f.latency[0].p99);
        cross.0.push(f.latency[1].p50);
        cross.1.push(f.latency[1].p99);
        author_cpu.push(f.cpu_ms[0]);
        reader_cpu.push(f.cpu_ms[1]);
        messages.push(f.published);
        bytes.push(f.bytes);
    }
    println!("| set-up | reader | latency p50 (ms) | p99 (ms) | CPU per edit (ms) |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| one node, no Redis | same node | {} | {} | {} |",
        one_latency.0.show(2),
        one_latency.1.show(2),
        one_cpu.show(3)
    );
    println!(
        "| two nodes + Redis | same node | {} | {} | {} (author's node) |",
        same.0.show(2),
        same.1.show(2),
        author_cpu.show(3)
    );
    println!(
        "| two nodes + Redis | other node | {} | {} | {} (receiving node) |",
        cross.0.show(2),
        cross.1.show(2),
        reader_cpu.show(3)
    );
    println!(
        "relay per edit (both nodes' PUBLISHes, heartbeats included): {} messages, {} bytes",
        messages.show(2),
        bytes.show(0)
    );
    drop(single);

    let idler = Server::start(
        &db,
        &[
            "--redis-url",
            &redis.url(),
            "--max-connections",
            "20000",
            "--max-rooms-per-minute",
            "100000",
        ],
    )
    .await;
    idle(&idler, args.pick(10_000, 1_000)).await;
}
